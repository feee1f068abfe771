"""The RLModule: a pretrained denoiser whose exploration forward runs the whole T-step CTMC sampler.

One forward = one batch of whole sequences. RLlib skips its own action sampling because the module returns
``Columns.ACTIONS`` itself; every other key it returns becomes an ``extra_model_outputs`` column of the
episode and reaches the learner's train batch. These carry the old-policy quantities of SEPO, computed
ONCE, where x was sampled and with the very weights that sampled it (so their cost scales out with the
rollout workers and the ratio stays right under stale weights):

With objective "sepo" (the Hamming-1 neighbourhood of the clean x):

- ``positions`` (N, K): the Hamming-1 positions subsampled for the loss;
- ``old_log_scores`` (N, K, m): log s_theta_old(x)_y for those neighbours y;
- ``old_log_pi_hat`` (N, K, m): log pi_hat_theta_old(y) (SNIS with M samples, or single-sample pi);
- ``snis_sites`` (N, K, m-1, M): the SNIS re-mask sites, reused by the learner for pi_hat_theta(y) (common
  random numbers: the ratio is exactly 1 at theta = theta_old instead of SNIS noise tripping the clip);

always:

- ``kl_states`` (N, S, L) and ``kl_steps`` (N, S): states of the sampler path for the App. D.2 KL;
- ``group_id`` (N,): GRPO group of each sequence (G consecutive sub-environments share one);
- ``sample_log_prob`` (N,): log-probability of the sampler's own path;
- with ``objective="trajectory"`` (the DDPO / d1-style baseline): ``path_states`` (N, P+1, L) and
  ``old_step_log_prob`` (N, P), the recorded path and its per-transition log-probabilities;
- with ``objective="sepo_t"`` (SEPO at every noise level): ``noise_states`` (N, S', L), ``noise_weights``
  (N, S') and ``old_token_log_prob`` (N, S', L), see :func:`sepo_ray.diffusion.elbo_states`;
- with ``neighbour_tokens`` J set: ``neighbour_tokens`` (N, K, J), the proposed tokens per position;
- for a task with prompts: ``free`` (N, L) bool, False at the prompt's tokens (clamped context: the loss,
  the SNIS sites and the KL touch only the completion).

With ``advantage="critic"`` the module also holds the value network V_phi(prompt)
(:class:`sepo_ray.sepo.critic.ValueNet`, App. B.1 / E.1), as RLlib's PPO module holds its value head: the
learner trains it with its own optimiser and checkpoints it with the rest of the module; rollout workers,
which only sample, build the module without it (``InferenceOnlyAPI``).

The quantities are assembled by :func:`sepo_ray.sepo.update.rollout`, the same function the benchmarks call.
"""

from __future__ import annotations

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from sepo_ray import diffusion
from sepo_ray.resolve import generator_spec
from sepo_ray.sepo import update
from sepo_ray.sepo.critic import ValueNet
from sepo_ray.tasks import get_task


def sampler_seed(seed: int | None, worker_index: int = 0) -> int:
    """The sampler's seed on rollout worker ``worker_index`` (0: the local one): the config's seed, offset per
    worker so that workers draw different samples and a run draws the same ones again; OS entropy without a seed."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**62))
    return (int(seed) * 1_000_003 + int(worker_index)) % (2**62)


class SEPOTorchRLModule(TorchRLModule, InferenceOnlyAPI):
    """Wraps the task's denoiser ``model(z (B, L)) -> logits (B, L, m)``; the policy is its sampler.

    Its settings arrive one way: ``model_config["sepo"]``, the config's SEPO fields and seed
    (``SEPOConfig.validate``)."""

    def setup(self):
        settings = self.model_config["sepo"]
        if settings.get("torch_threads"):  # every process that builds the module: learner, rollout workers
            torch.set_num_threads(int(settings["torch_threads"]))
        self.task = get_task(settings["task"])
        self.spec = update.UpdateSpec.from_settings(settings, self.task.num_tokens)
        self.group_size = int(settings["group_size"])
        self.denoiser = self.task.build_denoiser(generator_spec(settings))
        self.schedule = diffusion.LogLinearSchedule()
        self._rng = torch.Generator()
        self._rng.manual_seed(
            sampler_seed(settings["seed"])
        )  # remote workers: reseeded by index (SEPO.setup)
        if settings["advantage"] == "critic":  # V_phi(prompt), App. B.1 / E.1
            self.value_net = ValueNet(
                self.task.num_tokens,
                self.task.prompt_length,
                hidden=int(settings["critic_hidden"]),
                seed=int(settings["seed"] or 0),
            )

    def get_non_inference_attributes(self) -> list[str]:
        """The value network: only the learner needs it."""
        return ["value_net"]

    def values(self, prompt: torch.Tensor) -> torch.Tensor:
        """V_phi(prompt) (N,) float32 for prompts (N, P) int64, MASK-padded (with gradient)."""
        return self.value_net(prompt)

    # ------------------------------------------------------------------------------------- sampling
    def generate(
        self, num: int, generator: torch.Generator | None = None, prompt: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Samples ``num`` sequences (after ``prompt`` (N, P), MASK-padded, if given) and the old-policy quantities
        SEPO needs (see module docstring)."""
        g = generator if generator is not None else self._rng
        out = update.rollout(
            self.denoiser,
            num,
            self.task.length,
            self.spec,
            generator=g,
            schedule=self.schedule,
            prompt=prompt,
        )
        base = int(torch.randint(0, 2**40, (1,), generator=g)) * 4096
        tokens = (
            torch.int8 if self.task.num_tokens < 127 else torch.int32
        )  # ids 0..m (MASK = m) travel compactly
        extra = {}
        if "path_states" in out:  # the trajectory baseline: the whole path and its per-step log-probs
            extra["path_states"] = out["path_states"].to(tokens)  # (N, P + 1, L)
            extra["old_step_log_prob"] = out["old_step_log_prob"]  # (N, P)
        if "noise_states" in out:  # sepo_t: noised states of x, their ELBO weights and old token log-probs
            extra["noise_states"] = out["noise_states"].to(tokens)  # (N, S', L)
            extra["noise_weights"] = out["noise_weights"]  # (N, S')
            extra["old_token_log_prob"] = out["old_token_log_prob"]  # (N, S', L)
        if "positions" in out:  # sepo: the Hamming-1 neighbourhood's old-policy quantities
            extra["positions"] = out["positions"]  # (N, K)
            extra["old_log_scores"] = out["old_log_scores"]  # (N, K, m)
            extra["old_log_pi_hat"] = out["old_log_pi_hat"]  # (N, K, m)
            extra["snis_sites"] = out["snis_sites"].to(torch.int16)  # (N, K, J, M): shared with the learner
        if "neighbour_tokens" in out:
            extra["neighbour_tokens"] = out["neighbour_tokens"]  # (N, K, J)
        if "free" in out:
            extra["free"] = out["free"]  # (N, L) bool: False at prompt tokens
        return {
            **extra,
            Columns.ACTIONS: out["x"],
            "kl_states": out["kl_states"].to(tokens),  # (N, S, L)
            "kl_steps": out["kl_steps"],  # (N, S)
            "group_id": base + torch.arange(num) // self.group_size,  # (N,)
            "sample_log_prob": out["sample_log_prob"],  # (N,)
        }

    @torch.no_grad()
    def _forward_exploration(self, batch, **kwargs):
        obs = batch[Columns.OBS]  # (N, 2 + P): [terminal_flag, prompt_id, prompt tokens]
        n = obs.shape[0]
        active = obs[:, 0] < 0.5  # rows at a reset step need no sample
        prompt = obs[:, 2:].round().long() if obs.shape[1] > 2 else None  # (N, P) MASK-padded
        if not bool(active.any()):
            return {Columns.ACTIONS: torch.zeros(n, self.task.length, dtype=torch.long)}
        if bool(active.all()):
            return self.generate(n, prompt=prompt)
        out = self.generate(int(active.sum()), prompt=prompt[active] if prompt is not None else None)
        full = {}
        for key, value in out.items():
            buf = torch.zeros((n, *value.shape[1:]), dtype=value.dtype)
            buf[active] = value
            full[key] = buf
        return full

    def _forward_inference(self, batch, **kwargs):
        return self._forward_exploration(batch, **kwargs)

    def _forward(self, batch, **kwargs):
        return self._forward_exploration(batch, **kwargs)

    def _forward_train(self, batch, **kwargs):
        return {}  # the SEPO loss needs its own masked forwards: see SEPOTorchLearner
