"""SEPO as an RLlib Algorithm: sample -> score -> update -> sync weights.

Rollout workers (EnvRunners) hold theta_old and run the whole T-step sampler inside the RLModule; their
environment sends each batch of sequences to the reward-oracle actors in ONE call. The algorithm then turns
rewards into advantages where every GRPO group is whole (here, before the data is split across learners),
the learner group runs K epochs of the SEPO loss, and the new weights are broadcast to the workers. With
``advantage="critic"`` the driver also holds the value network V(prompt) (:class:`sepo_ray.sepo.Critic`): it
reads each episode's prompt from its first observation, scores the batch, then fits V on it.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import numpy as np
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.metrics import (
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from sepo_ray import sepo
from sepo_ray.oracles.pool import RewardError, RewardPool
from sepo_ray.rllib.config import SEPOConfig

logger = logging.getLogger(__name__)

SEPO_KEY = "sepo"


class SEPO(Algorithm):
    """Score Entropy Policy Optimization (Zekri & Boulle) on RLlib's new API stack."""

    @classmethod
    def get_default_config(cls) -> SEPOConfig:
        return SEPOConfig(algo_class=cls)

    @classmethod
    def default_resource_request(cls, config):
        """RLlib's bundles (driver, rollout workers, learners) plus one per reward-oracle actor that needs GPUs,
        so that a Tune trial reserves its oracles too (child actors are placed in the trial's group)."""
        from ray.tune.execution.placement_groups import PlacementGroupFactory

        pgf = super().default_resource_request(config)
        cfg = cls.get_default_config().update_from_dict(config) if isinstance(config, dict) else config
        gpus = float(getattr(cfg, "oracle_num_gpus", 0.0) or 0.0)
        actors = int(getattr(cfg, "oracle_actors", 0) or 0)
        if gpus <= 0 or actors <= 0:
            return pgf
        return PlacementGroupFactory(
            bundles=list(pgf.bundles) + [{"GPU": gpus} for _ in range(actors)], strategy=pgf.strategy
        )

    # ------------------------------------------------------------------------------------------ setup
    def setup(self, config) -> None:
        cfg = self.config
        self._reward_pool = None
        self._baseline = None  # PPO: learned scalar value of the (single-state) bandit
        self._critic = None  # actor-critic: V_phi(prompt) and its optimiser (App. B.1, App. E.1)
        if cfg.advantage == "critic":
            task = cfg.task_spec()
            self._critic = sepo.Critic(
                task.num_tokens,
                int(getattr(task, "prompt_length", 0) or 0),
                hidden=int(cfg.critic_hidden),
                lr=float(cfg.critic_lr),
                steps=int(cfg.critic_steps),
                seed=int(cfg.seed or 0),
            )
        if cfg.oracle_actors > 0:
            spec = cfg.reward or cfg.task_spec().default_reward
            self._reward_pool = RewardPool(
                spec,
                num_actors=cfg.oracle_actors,
                num_gpus=float(cfg.oracle_num_gpus),
                max_restarts=int(cfg.oracle_max_restarts),
                timeout_s=float(cfg.reward_timeout_s),
            )
            new = cfg.copy(copy_frozen=False)
            env_config = dict(new.env_config)
            env_config.pop("reward", None)
            env_config["reward_pool"] = self._reward_pool.address()
            new.env_config = env_config
            new.freeze()
            self.config = new
        super().setup(config)

    def cleanup(self) -> None:
        super().cleanup()
        if self._reward_pool is not None:
            try:
                self._reward_pool.kill()
            except Exception:  # noqa: BLE001 - Ray may already be shutting down
                pass
            self._reward_pool = None

    # ----------------------------------------------------------------------------------- one iteration
    def training_step(self) -> None:
        cfg = self.config
        # 1. Sample: B * G whole sequences with theta_old (old-policy SEPO quantities ride along).
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes = []
            for attempt in range(4):
                got, runner_results = synchronous_parallel_sample(
                    worker_set=self.env_runner_group,
                    max_env_steps=cfg.batch_sequences - len(episodes),
                    sample_timeout_s=cfg.sample_timeout_s,
                    _uses_new_env_runners=True,
                    _return_metrics=True,
                )
                episodes += [e for e in got if len(e) > 0]
                self.metrics.aggregate(runner_results, key=ENV_RUNNER_RESULTS)
                if len(episodes) >= cfg.batch_sequences:
                    break
                logger.warning(
                    "SEPO: sampled %d/%d sequences; restoring rollout workers",
                    len(episodes),
                    cfg.batch_sequences,
                )
                time.sleep(1.0 + attempt)  # give Ray time to restart a crashed worker
                self.restore_env_runners(self.env_runner_group)
            if not episodes:
                raise RuntimeError("SEPO: every rollout worker failed to sample, four times in a row")

        # 2. Score: rewards (already computed by the oracle actors inside the env step) -> advantages.
        rewards = self._check_rewards(episodes)
        advantages, advantage_stats = self._advantages(episodes, rewards)
        for episode, a in zip(episodes, advantages):
            episode.custom_data["advantage"] = float(a)

        # 3. Update: K epochs of the SEPO loss on the whole batch.
        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self.learner_group.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0
                    )
                },
                num_epochs=cfg.num_epochs,
                minibatch_size=None,
                shuffle_batch_per_epoch=False,
            )
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)

        # 4. Sync: broadcast the new weights to every rollout worker.
        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            modules = set(learner_results[0].keys()) - {"__all_modules__"}
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group, policies=modules, inference_only=True
            )

        self._log_sepo_metrics(rewards, learner_results, advantage_stats)
        if cfg.heldout_eval_interval and (self.training_iteration + 1) % cfg.heldout_eval_interval == 0:
            for name, value in self.heldout_metrics().items():
                self.metrics.log_value((SEPO_KEY, name), value, window=1)

    # ------------------------------------------------------------------------------------------ score
    def _check_rewards(self, episodes) -> np.ndarray:
        rewards = np.array([e.get_return() for e in episodes], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(rewards))
        if bad.size:
            info = episodes[int(bad[0])].get_infos(-1) or {}
            message = info.get("reward_error") if isinstance(info, dict) else None
            spec = self.config.reward or self.config.task_spec().default_reward
            raise RewardError(
                message or f"reward {spec!r} returned a non-finite value for {bad.size} sequences"
            )
        return rewards

    def _advantages(self, episodes, rewards: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Advantages (N,) float64 in episode order, and stats to log (the critic's; {} otherwise)."""
        cfg = self.config
        if cfg.advantage == "critic":
            # A = R - V_phi(prompt), V_phi before this batch's fit; then V_phi is fitted by MSE. App. B.1, E.1
            advantages, stats = self._critic.advantages(_prompts(episodes), torch.as_tensor(rewards))
            return advantages.numpy(), {f"critic_{k}": v for k, v in stats.items()}
        if cfg.advantage == "ppo":
            # A = R - V with V the learned value of the single bandit state (running mean of rewards).
            baseline = float(rewards.mean()) if self._baseline is None else self._baseline
            self._baseline = 0.9 * baseline + 0.1 * float(rewards.mean())
            r = torch.as_tensor(rewards)
            return sepo.ppo_advantages(r, torch.full_like(r, baseline)).numpy(), {}
        group_ids = np.array([int(e.get_extra_model_outputs("group_id", -1)) for e in episodes])
        order = np.argsort(group_ids, kind="stable")
        _, counts = np.unique(group_ids[order], return_counts=True)
        if not np.all(counts == cfg.group_size):
            raise RuntimeError(
                f"SEPO: GRPO groups of sizes {sorted(set(counts.tolist()))}, expected {cfg.group_size}"
            )
        adv_sorted = sepo.group_advantages(torch.as_tensor(rewards[order]), cfg.group_size).numpy()
        advantages = np.empty_like(adv_sorted)
        advantages[order] = adv_sorted
        return advantages, {}

    def _log_sepo_metrics(self, rewards: np.ndarray, learner_results, extra: dict[str, float]) -> None:
        res = learner_results[0].get(DEFAULT_MODULE_ID, {}) if learner_results else {}

        def last(key):
            v = res.get(key)
            v = v.peek() if hasattr(v, "peek") else v
            return float(v) if v is not None else float("nan")

        for key, value in {
            "reward_mean": float(rewards.mean()),
            "reward_median": float(np.median(rewards)),
            "reward_max": float(rewards.max()),
            "kl": last("kl"),
            "clip_frac": last("clip_frac"),
            **extra,
        }.items():
            self.metrics.log_value((SEPO_KEY, key), value, window=1)

    # --------------------------------------------------------------------------------- current weights
    def current_denoiser(self) -> torch.nn.Module:
        """A CPU copy of the learner's current generator (what the next iteration will sample from)."""
        cfg = self.config
        weights = self.learner_group.get_weights()[DEFAULT_MODULE_ID]
        model = cfg.task_spec().build_denoiser(cfg.generator)
        prefix = "denoiser."
        state = {k[len(prefix) :]: torch.as_tensor(v) for k, v in weights.items() if k.startswith(prefix)}
        model.load_state_dict(state)
        return model.eval()

    def heldout_metrics(self, num_samples: int | None = None, seed: int = 0) -> dict[str, float]:
        """The task's held-out figures of fresh samples from the current model (nothing here trains).

        ``heldout_score`` (an oracle never used in training) and ``heldout_realism`` (how much the samples
        still look like real data), as the task defines them; {} for a task without a held-out check.
        """
        cfg = self.config
        task = cfg.task_spec()
        g = torch.Generator().manual_seed(seed)
        seqs = task.sample(
            self.current_denoiser(),
            num_samples or cfg.heldout_samples,
            cfg.denoise_steps,
            generator=g,
            corrector_steps=cfg.corrector_steps,
        )
        return task.heldout(seqs)

    # ---------------------------------------------------------------------------------- checkpointing
    def get_state(self, *args, **kwargs):
        """RLlib's state plus SEPO's own: the PPO baseline, the critic (weights and Adam moments) and the
        random-number state of every sampler and learner, so that a resumed run draws what the uninterrupted
        run would have drawn."""
        state = super().get_state(*args, **kwargs)
        state["sepo_baseline"] = self._baseline
        state["sepo_critic"] = self._critic.get_state() if self._critic is not None else None
        state["sepo_rng"] = {
            "runners": dict(self.env_runner_group.foreach_env_runner(_runner_rng_state)),
            "learners": [r.get() for r in self.learner_group.foreach_learner(_learner_rng_state)],
        }
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        if "sepo_baseline" in state:
            self._baseline = state["sepo_baseline"]
        if self._critic is not None and state.get("sepo_critic") is not None:
            self._critic.set_state(state["sepo_critic"])
        rng = state.get("sepo_rng")
        if rng:
            self.env_runner_group.foreach_env_runner(partial(_set_runner_rng_state, states=rng["runners"]))
            if rng["learners"]:
                self.learner_group.foreach_learner(partial(_set_learner_rng_state, state=rng["learners"][0]))


def _prompts(episodes) -> torch.Tensor:
    """Each episode's prompt (N, P) int64, MASK-padded, from its first observation [flag, prompt_id, prompt]."""
    obs = np.stack([np.asarray(e.get_observations(0), dtype=np.float32) for e in episodes])  # (N, 2 + P)
    if np.any(obs[:, 0] != 0.0):
        raise RuntimeError("SEPO: an episode does not start at a reset observation (terminal flag set)")
    return torch.from_numpy(np.rint(obs[:, 2:])).long()  # (N, P); P = 0 without prompts


# Module-level (they travel to remote workers; they must not capture the Algorithm).
def _runner_env(runner):
    env = getattr(runner, "env", None)
    return getattr(env, "unwrapped", env)


def _runner_rng_state(runner) -> tuple[int, tuple]:
    """(worker index, (sampler generator state, environment generator state)): the env draws the prompts."""
    env = _runner_env(runner)
    env_state = env.rng_state() if hasattr(env, "rng_state") else None
    return int(runner.worker_index), (runner.module._rng.get_state().numpy().tobytes(), env_state)


def _set_runner_rng_state(runner, states: dict) -> None:
    if int(runner.worker_index) not in states:
        return
    sampler, env_state = states[int(runner.worker_index)]
    runner.module._rng.set_state(torch.from_numpy(np.frombuffer(sampler, dtype=np.uint8).copy()))
    env = _runner_env(runner)
    if env_state is not None and hasattr(env, "set_rng_state"):
        env.set_rng_state(env_state)


def _learner_rng_state(learner) -> bytes:
    return learner._noise.get_state().numpy().tobytes()


def _set_learner_rng_state(learner, state: bytes) -> None:
    learner._noise.set_state(torch.from_numpy(np.frombuffer(state, dtype=np.uint8).copy()))
