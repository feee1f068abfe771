"""The SEPO Learner: RLlib's TorchLearner whose loss is the pure SEPO update of ``sepo_ray.sepo.update``.

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

from sepo_ray.sepo import update

ADVANTAGES = "advantages"


class DivergenceError(FloatingPointError):
    """The update met a non-finite loss, gradient or weight; the run must stop (the last checkpoint stays good)."""


def check_finite_weights(module: torch.nn.Module, what: str) -> None:
    """Raise :class:`DivergenceError` naming the first parameter of ``module`` with a NaN or inf entry."""
    for name, p in module.named_parameters():
        bad = int((~torch.isfinite(p)).sum())
        if bad:
            raise DivergenceError(f"{what}: parameter {name} has {bad} non-finite entries")


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

    def reference(self, module_id: str, config) -> torch.nn.Module:
        """The frozen KL reference: the task's pretrained generator, built once from the config (never reset)."""
        if module_id not in self._reference:
            ref = config.task_spec().build_denoiser(config.generator).to(self._device)
            ref.eval().requires_grad_(False)
            self._reference[module_id] = ref
        return self._reference[module_id]

    def compute_loss_for_module(
        self, *, module_id: str, config, batch: dict[str, Any], fwd_out
    ) -> torch.Tensor:
        """One epoch's loss, assembled by the pure :func:`sepo_ray.sepo.update.update_loss` with the settings
        of the config RLlib hands the learner (as RLlib's PPO learner reads ``config.clip_param``)."""
        module = self.module[module_id].unwrapped()
        spec = config.update_spec()
        reference = self.reference(module_id, config) if float(spec.kl_alpha) > 0 else None
        total, stats = update.update_loss(
            module.denoiser,
            reference,
            {**batch, "x": batch[Columns.ACTIONS], "advantages": batch[ADVANTAGES]},
            spec,
            generator=self._noise,
            schedule=module.schedule,
        )
        if not bool(torch.isfinite(total)):
            raise DivergenceError(
                f"non-finite loss {float(total.detach())} (objective {float(stats['objective_loss'])}, "
                f"KL {float(stats['kl'])}); the update was not applied"
            )
        self.metrics.log_dict(
            {
                "sepo_loss": stats.pop("objective_loss"),
                **{k: (v.detach() if torch.is_tensor(v) else v) for k, v in stats.items()},
            },
            key=module_id,
            window=1,
        )
        return total

    def apply_gradients(self, gradients_dict) -> None:
        """RLlib's step, but a non-finite gradient stops the run instead of being zeroed in silence, and a step
        that leaves non-finite weights (a learning rate too large, say) stops it too."""
        bad = sum(1 for g in gradients_dict.values() if not bool(torch.isfinite(g).all()))
        if bad:
            raise DivergenceError(
                f"non-finite gradients in {bad} parameter tensors; the update was not applied"
            )
        super().apply_gradients(gradients_dict)
        for module_id in self.module.keys():
            check_finite_weights(self.module[module_id].unwrapped(), "weights after the optimiser step")
