"""The SEPO Learner: RLlib's TorchLearner whose loss is the pure SEPO update of ``sepo_ray.sepo.update``.

Per update (K epochs over the whole batch of B * G sequences) the learner recomputes, under the current
theta, only what depends on theta: the log-scores log s_theta(x)_y (with gradient), pi_hat_theta(y) (SNIS, no
gradient) and the path KL against the frozen pretrained generator. The old-policy quantities arrive with the
episodes (see ``sepo_ray.rllib.module``).

Advantages reach the batch through the learner connector :class:`AddAdvantages`: GRPO's and the running
baseline's come with ``episode.custom_data`` (computed by the algorithm, where every group is whole); the
actor-critic's are computed here, as RLlib's PPO computes its value-based advantages in its learner connector:
A = R - V_phi(prompt) with V_phi before this update (App. B.1 / E.1). V_phi then trains with the policy, its MSE
added to the loss and stepped by its own optimiser (``critic_lr``), both owned by this learner and saved in its
checkpoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from sepo_ray.resolve import generator_spec
from sepo_ray.sepo import center_value, critic_advantages, critic_stats, update, value_loss

ADVANTAGES = "advantages"


class DivergenceError(FloatingPointError):
    """The update met a non-finite loss, gradient or weight; the run must stop (the last checkpoint stays good)."""


def check_finite_weights(module: torch.nn.Module, what: str) -> None:
    """Raise :class:`DivergenceError` naming the first parameter of ``module`` with a NaN or inf entry."""
    for name, p in module.named_parameters():
        bad = int((~torch.isfinite(p)).sum())
        if bad:
            raise DivergenceError(f"{what}: parameter {name} has {bad} non-finite entries")


def episode_prompts(episodes) -> torch.Tensor:
    """Each episode's prompt (N, P) int64, MASK-padded, from its first observation [flag, prompt_id, prompt]."""
    obs = np.stack([np.asarray(e.get_observations(0), dtype=np.float32) for e in episodes])  # (N, 2 + P)
    if np.any(obs[:, 0] != 0.0):
        raise RuntimeError("SEPO: an episode does not start at a reset observation (terminal flag set)")
    return torch.from_numpy(np.rint(obs[:, 2:])).long()  # (N, P); P = 0 without prompts


class AddAdvantages(ConnectorV2):
    """Learner connector piece: the ``advantages`` column, from ``episode.custom_data["advantage"]`` or, with a
    value network in the module, A = R - V_phi(prompt) (normalised, :func:`sepo_ray.sepo.critic_advantages`)."""

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, metrics=None, **kwargs):
        episodes = list(self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False))
        module = rl_module[DEFAULT_MODULE_ID].unwrapped() if DEFAULT_MODULE_ID in rl_module else None
        if module is not None and getattr(module, "value_net", None) is not None and episodes:
            prompts = episode_prompts(episodes)  # (N, P)
            rewards = torch.tensor([e.get_return() for e in episodes], dtype=torch.float64)  # (N,)
            center_value(module.value_net, prompts, rewards)
            with torch.no_grad():
                values = module.values(prompts).detach().cpu()  # (N,): V_phi before this update
            module.value_net.fits += 1
            advantages = critic_advantages(rewards, values).tolist()
            if metrics is not None:
                stats = critic_stats(values, rewards)
                metrics.log_dict(
                    {f"critic_{k}": v for k, v in stats.items()}, key=DEFAULT_MODULE_ID, window=1
                )
        else:
            if any("advantage" not in e.custom_data for e in episodes):
                raise ValueError(
                    "episode without an advantage: SEPO.training_step computes them before the update; "
                    "call learner_group.update only through SEPO"
                )
            advantages = [float(e.custom_data["advantage"]) for e in episodes]
        for episode, advantage in zip(episodes, advantages):
            self.add_n_batch_items(
                batch,
                ADVANTAGES,
                items_to_add=[float(advantage)] * len(episode),
                num_items=len(episode),
                single_agent_episode=episode,
            )
        return batch


class SEPOTorchLearner(TorchLearner):
    """Loss = SEPO (Remark 3.1, App. B) + alpha * KL(pi_theta || pi_pretrained) along the path (App. D.2)
    [+ the value MSE of the actor-critic's V_phi (App. E.1)]."""

    def build(self) -> None:
        super().build()
        if self._learner_connector is not None:
            self._learner_connector.prepend(AddAdvantages())
        self._reference: dict[str, torch.nn.Module] = {}
        self._noise = torch.Generator()
        self._noise.manual_seed(int(self.config.seed or 0) + 7919)

    def configure_optimizers_for_module(self, module_id: str, config=None) -> None:
        """Adam on the denoiser at ``lr`` (RLlib's default); with a value network, a second Adam on it at
        ``critic_lr``, each clipped and stepped on its own parameters."""
        module = self._module[module_id]
        policy = list(module.denoiser.parameters())
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.Adam(policy),
            params=policy,
            lr_or_lr_schedule=config.lr,
        )
        if getattr(module, "value_net", None) is not None:
            value = list(module.value_net.parameters())
            self.register_optimizer(
                module_id=module_id,
                optimizer_name="critic",
                optimizer=torch.optim.Adam(value),
                params=value,
                lr_or_lr_schedule=config.critic_lr,
            )

    def reference(self, module_id: str, config) -> torch.nn.Module:
        """The frozen KL reference: the task's pretrained generator, built once from the config (never reset)."""
        if module_id not in self._reference:
            ref = config.task_spec().build_denoiser(generator_spec(config)).to(self._device)
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
        if getattr(module, "value_net", None) is not None:  # the critic's MSE, App. E.1
            prompts = batch[Columns.OBS][:, 2:].round().long()  # (N, P)
            fit, _ = value_loss(module.values(prompts), batch[Columns.REWARDS].float())
            total = total + fit
            stats["critic_fit_loss"] = fit.detach()
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
