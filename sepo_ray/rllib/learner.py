"""The SEPO Learner: RLlib's TorchLearner whose loss is the pure SEPO loss of ``sepo_ray.sepo``.

Per update (K epochs over the whole batch of B * G sequences) the learner recomputes, under the current
theta, only what depends on theta: the log-scores log s_theta(x)_y (with gradient), pi_hat_theta(y) (SNIS, no
gradient) and the path KL against the frozen pretrained generator. The old-policy quantities arrive with the
episodes (see ``sepo_ray.rllib.module``) and the advantages with ``episode.custom_data`` (computed by the
algorithm where every group is whole).
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from sepo_ray import diffusion, sepo

ADVANTAGES = "advantages"


class AddAdvantagesFromEpisodes(ConnectorV2):
    """Learner connector piece: ``episode.custom_data["advantage"]`` -> the ``advantages`` column."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs):
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            if "advantage" not in episode.custom_data:
                raise ValueError(
                    "episode without an advantage: SEPO.training_step computes them before the update; "
                    "call learner_group.update only through SEPO"
                )
            self.add_n_batch_items(
                batch,
                ADVANTAGES,
                items_to_add=[float(episode.custom_data["advantage"])] * len(episode),
                num_items=len(episode),
                single_agent_episode=episode,
            )
        return batch


class SEPOTorchLearner(TorchLearner):
    """Loss = SEPO (Remark 3.1, App. B) + alpha * KL(pi_theta || pi_pretrained) along the path (App. D.2)."""

    def build(self) -> None:
        super().build()
        if self._learner_connector is not None:
            self._learner_connector.prepend(AddAdvantagesFromEpisodes())
        self._reference: dict[str, torch.nn.Module] = {}
        self._noise = torch.Generator()
        self._noise.manual_seed(int(self.config.seed or 0) + 7919)

    def reference(self, module_id: str, module) -> torch.nn.Module:
        """The frozen KL reference: the task's pretrained generator, built once from the config (never reset)."""
        if module_id not in self._reference:
            ref = module.task.build_denoiser(module.settings["generator"]).to(self._device)
            ref.eval().requires_grad_(False)
            self._reference[module_id] = ref
        return self._reference[module_id]

    def _sepo_loss(self, module, batch):
        """SEPO, Remark 3.1 / App. B, with the clipped ratio r_{x,y} and weights pi_hat_theta(y)."""
        s = module.settings
        x = batch[Columns.ACTIONS].long()  # (N, L)
        positions = batch["positions"].long()  # (N, K)
        log_score = sepo.log_scores(module.denoiser, x, positions, s["score_estimator"])  # (N, K, m), grad
        with torch.no_grad():
            snis = int(s["snis_samples"])
            log_pi_hat = sepo.log_pi_hat(
                module.denoiser,
                x,
                positions,
                snis,
                s["score_estimator"],
                generator=self._noise,
                sites=batch["snis_sites"].long()
                if snis
                else None,  # the rollout's sites: common random numbers
            )  # (N, K, m)
            r = sepo.ratio(log_score.detach(), batch["old_log_scores"], log_pi_hat, batch["old_log_pi_hat"])
            # GRPO (App. B.2) = PPO's coefficient with group-standardised advantages, averaged over the group;
            # the mean over all B * G sequences below is that average, whatever the order of the batch.
            coefficients = sepo.ppo_coefficients(
                r,
                batch[ADVANTAGES],
                log_pi_hat.exp(),
                float(s["clip_eps"]),
                zero_clipped=bool(s["zero_clipped"]),
            )  # (N, K, m)
            mask = sepo.neighbour_mask(x, positions, module.task.num_tokens)  # (N, K, m)
        length, k = x.shape[1], positions.shape[1]
        loss, stats = sepo.sepo_loss(
            log_score, coefficients, mask, position_weight=length / k, ratio=r, clip_eps=float(s["clip_eps"])
        )
        return loss, stats

    def _trajectory_loss(self, module, batch):
        """Baseline: PPO-clipped REINFORCE on the sampler's own per-step log-probabilities (DDPO / d1)."""
        s = module.settings
        ops = diffusion.path_ops(int(s["denoise_steps"]), int(s["corrector_steps"]))
        path = diffusion.Path(batch["path_states"].long(), ops)  # (N, P + 1, L)
        step_log_prob = diffusion.score_path(module.denoiser, path, module.schedule, reduce=False)  # (N, P)
        return sepo.trajectory_pg_loss(
            step_log_prob, batch["old_step_log_prob"], batch[ADVANTAGES], float(s["clip_eps"])
        )

    def compute_loss_for_module(
        self, *, module_id: str, config, batch: dict[str, Any], fwd_out
    ) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        s = module.settings
        if s["objective"] == "trajectory":
            loss, stats = self._trajectory_loss(module, batch)
        else:
            loss, stats = self._sepo_loss(module, batch)
        total = loss
        kl = torch.zeros((), device=loss.device)
        if float(s["kl_alpha"]) > 0:
            ref = self.reference(module_id, module)
            kl = sepo.kl_to_reference(
                module.denoiser,
                ref,
                batch["kl_states"].long(),  # (N, S, L)
                batch["kl_steps"].long(),  # (N, S)
                num_steps=int(s["denoise_steps"]),
                schedule=module.schedule,
            ).mean()
            total = total + float(s["kl_alpha"]) * kl
        self.metrics.log_dict(
            {
                "sepo_loss": loss.detach(),
                "kl": kl.detach(),
                "total_loss": total.detach(),
                **{k: (v.detach() if torch.is_tensor(v) else v) for k, v in stats.items()},
            },
            key=module_id,
            window=1,
        )
        return total
