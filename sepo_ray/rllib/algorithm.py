"""SEPO as an RLlib Algorithm and its config (one module, as RLlib's own ``ppo.py``): sample -> score -> update ->
sync weights.

``SEPOConfig()`` with no arguments fine-tunes the default task's pretrained generator against its default
reward, so ``SEPOConfig().build_algo().train()`` works as any RLlib user would try it. SEPO's own settings are set
with ``config.sepo(...)`` (or ``config.training(...)``, which accepts the same names); every field's default,
unit, help and allowed range are declared once in :mod:`sepo_ray.settings`, and a run's whole set of values is
resolved once by :func:`sepo_ray.resolve.resolve_settings` (``SEPOConfig.from_settings``).

Rollout workers (EnvRunners) hold theta_old and run the whole T-step sampler inside the RLModule; their
environment sends each batch of sequences to the reward-oracle actors in ONE call. The algorithm turns rewards
into GRPO (or running-baseline) advantages where every group is whole (here, before the data is split across
learners); the actor-critic's advantages come from the value network inside the learner's module. The learner
group runs K epochs of the SEPO loss, and the new weights are broadcast to the workers.
"""

from __future__ import annotations

import logging
from functools import partial

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
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
from sepo_ray.envs import SequenceBanditEnv
from sepo_ray.oracles.pool import RewardError, RewardPool
from sepo_ray.resolve import check_rules, generator_spec
from sepo_ray.sepo.update import UpdateSpec
from sepo_ray.settings import SEPO_SETTINGS, SETTINGS
from sepo_ray.tasks import get_task

from .learner import SEPOTorchLearner
from .module import SEPOTorchRLModule
from .sampling import AsyncSampler, sample_sync
from .state import (
    learner_rng_state,
    runner_rng_state,
    seed_runner,
    set_learner_rng_state,
    set_runner_rng_state,
)

logger = logging.getLogger(__name__)

SEPO_KEY = "sepo"
#: name -> (default, one-line description): SEPO's own fields, from the one schema (``sepo_ray.settings``)
SEPO_FIELDS: dict[str, tuple[object, str]] = {name: (s.default, s.help) for name, s in SEPO_SETTINGS.items()}


class SEPOConfig(AlgorithmConfig):
    """Configuration of the SEPO algorithm (Score Entropy Policy Optimization) on RLlib's new API stack."""

    def __init__(self, algo_class=None):
        super().__init__(algo_class=algo_class or SEPO)
        for name, setting in SETTINGS.items():  # SEPO's fields, and the RLlib ones with SEPO's defaults
            setattr(self, name, setting.default)
        self.minibatch_size = None
        self.shuffle_batch_per_epoch = False
        self.rollout_fragment_length = 1
        self.batch_mode = "truncate_episodes"
        self.sample_timeout_s = 600.0
        self.gym_env_vectorize_mode = gym.VectorizeMode.VECTOR_ENTRY_POINT
        self.restart_failed_env_runners = True
        self.restart_failed_sub_environments = False
        self.env = SequenceBanditEnv

    @classmethod
    def from_settings(cls, settings) -> SEPOConfig:
        """The config of a resolved :class:`~sepo_ray.resolve.Settings` (every value set as resolved)."""
        config = cls()
        for name, value in settings.values.items():
            setattr(config, name, value)
        return config

    # ----------------------------------------------------------------------------------------- fields
    def sepo(self, **kwargs) -> SEPOConfig:
        """Sets SEPO fields by name (see :data:`SEPO_FIELDS`); an unknown name raises ValueError."""
        for name, value in kwargs.items():
            if value is NotProvided:
                continue
            if name not in SEPO_FIELDS:
                raise ValueError(
                    f"unknown SEPO field {name!r}; valid fields: {', '.join(sorted(SEPO_FIELDS))}"
                )
            setattr(self, name, value)
        return self

    def training(self, **kwargs) -> SEPOConfig:
        """RLlib's ``training()`` plus every SEPO field (``clip_eps``, ``kl_alpha``, ...)."""
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in SEPO_FIELDS}
        super().training(**kwargs)
        return self.sepo(**own)

    # --------------------------------------------------------------------------------------- derived
    @property
    def batch_sequences(self) -> int:
        """Sequences sampled per iteration: prompts_per_batch * group_size."""
        return int(self.prompts_per_batch) * int(self.group_size)

    def task_spec(self):
        """The :class:`~sepo_ray.tasks.Task` this config fine-tunes."""
        return get_task(self.task)

    def sepo_settings(self) -> dict:
        """The SEPO fields as a plain dict."""
        return {name: getattr(self, name) for name in SEPO_FIELDS}

    def update_spec(self) -> UpdateSpec:
        """The pure update's settings (:class:`sepo_ray.sepo.update.UpdateSpec`) for this config's task."""
        return UpdateSpec.from_settings(self.sepo_settings(), self.task_spec().num_tokens)

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=SEPOTorchRLModule)

    def get_default_learner_class(self):
        return SEPOTorchLearner

    # ------------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Checks every field and SEPO's cross-field rules, fills in the derived RLlib settings (batch sizes, the
        environment's and the module's configs: the one way settings reach them) and runs RLlib's checks."""
        self.validate_sepo()
        runners, learners = max(1, int(self.num_env_runners)), max(1, int(self.num_learners))
        self.num_envs_per_env_runner = self.batch_sequences // runners
        self.rollout_fragment_length = 1
        self.train_batch_size_per_learner = self.batch_sequences // learners
        self.train_batch_size = self.batch_sequences
        env_config = dict(self.env_config or {})
        env_config.update(
            task=self.task,
            reward_timeout_s=float(self.reward_timeout_s),
            group_size=int(self.group_size),
            prompts_file=self.prompts_file,
        )
        if not env_config.get("reward_pool"):
            env_config["reward"] = self.reward or self.task_spec().default_reward
        self.env_config = env_config
        model_config = dict(self._model_config or {}) if isinstance(self._model_config, dict) else {}
        model_config["sepo"] = {**self.sepo_settings(), "seed": self.seed}
        self._model_config = model_config
        super().validate()

    def validate_sepo(self) -> None:
        """Every field's range from the one schema, then SEPO's cross-field rules; errors name the field."""

        def where(field: str) -> str:
            return f"SEPOConfig.{field}={getattr(self, field, None)!r}"

        for name, setting in SETTINGS.items():
            why = setting.why_invalid(getattr(self, name, setting.default))
            if why is not None:
                raise ValueError(f"{where(name)}: {why}")
        try:
            task = self.task_spec()
        except ValueError as e:
            raise ValueError(f"{where('task')}: {e}") from None
        if self.minibatch_size is not None:
            raise ValueError(
                "SEPOConfig.minibatch_size must be None: each epoch uses the whole batch of B * G sequences "
                "(the GRPO coefficient averages over whole groups)"
            )
        check_rules({name: getattr(self, name) for name in SETTINGS}, task, where)


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

    def setup(self, config) -> None:
        cfg = self.config
        self._reward_pool = None
        self._baseline = None  # advantage 'ppo': running mean of the (single-state) bandit's reward
        self._validation_calls = 0  # oracle calls spent on the validation signal (charged like any other)
        if cfg.oracle_actors > 0:
            self._reward_pool = RewardPool(
                cfg.reward or cfg.task_spec().default_reward,
                num_actors=cfg.oracle_actors,
                num_gpus=float(cfg.oracle_num_gpus),
                resource=cfg.oracle_resource,
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
        self.env_runner_group.foreach_env_runner(partial(seed_runner, seed=cfg.seed), local_env_runner=False)
        if cfg.max_staleness and not self.env_runner_group.num_remote_workers():
            raise ValueError("SEPOConfig.max_staleness > 0 needs rollout workers (num_env_runners >= 1)")
        self._async = (
            AsyncSampler(self, cfg.max_staleness, cfg.sample_timeout_s) if cfg.max_staleness else None
        )
        self.restored_pending = 0  # an asynchronous run's unused samples its checkpoint could not keep

    def restore_env_runners(self, env_runner_group) -> list:
        """RLlib's restore, then the restored workers' samplers seeded by their index (not all alike)."""
        restored = super().restore_env_runners(env_runner_group)
        if restored:
            env_runner_group.foreach_env_runner(partial(seed_runner, seed=self.config.seed),
                                                remote_worker_ids=restored, local_env_runner=False)  # fmt: skip
        return restored

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
            wanted = cfg.batch_sequences
            episodes = self._async.collect(wanted) if self._async else sample_sync(self, wanted)
        # 2. Score: rewards (computed by the oracle actors inside the env step) -> advantages.
        rewards = self._check_rewards(episodes)
        for episode, a in zip(episodes, self._advantages(episodes, rewards)):
            if a is not None:  # the actor-critic's come from the learner's value network
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
            if self._async:  # queued behind each runner's sample in flight; acknowledged with its version
                self._async.broadcast()
            else:
                modules = set(learner_results[0].keys()) - {"__all_modules__"}
                self.env_runner_group.sync_weights(
                    from_worker_or_learner_group=self.learner_group, policies=modules, inference_only=True
                )
        self._log_sepo_metrics(rewards, learner_results, self._async.stats() if self._async else {})
        if cfg.validation_interval and (self.training_iteration + 1) % cfg.validation_interval == 0:
            for name, value in self.validation_metrics().items():
                self.metrics.log_value((SEPO_KEY, name), value, window=1)
        self.metrics.log_value((SEPO_KEY, "validation_calls"), self._validation_calls, window=1)

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

    def _advantages(self, episodes, rewards: np.ndarray) -> list:
        """Advantages in episode order: GRPO's (whole groups) or the running baseline's; None each for the
        actor-critic (its learner computes A = R - V_phi(prompt))."""
        cfg = self.config
        if cfg.advantage == "critic":
            return [None] * len(episodes)
        if cfg.advantage == "ppo":
            # A = R - V with V the learned value of the single bandit state (running mean of rewards).
            baseline = float(rewards.mean()) if self._baseline is None else self._baseline
            self._baseline = 0.9 * baseline + 0.1 * float(rewards.mean())
            r = torch.as_tensor(rewards)
            return sepo.ppo_advantages(r, torch.full_like(r, baseline)).tolist()
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
        return advantages.tolist()

    def _log_sepo_metrics(self, rewards: np.ndarray, learner_results, extra: dict) -> None:
        res = learner_results[0].get(DEFAULT_MODULE_ID, {}) if learner_results else {}

        def last(key):
            v = res.get(key)
            v = v.peek() if hasattr(v, "peek") else v
            return float(v) if v is not None else float("nan")

        values = {
            "reward_mean": float(rewards.mean()),
            "reward_median": float(np.median(rewards)),
            "reward_max": float(rewards.max()),
            "kl": last("kl"),
            "clip_frac": last("clip_frac"),
            **{k: last(k) for k in res if k.startswith("critic_")},
            **extra,
        }
        for key, value in values.items():
            self.metrics.log_value((SEPO_KEY, key), value, window=1)

    # --------------------------------------------------------------------------------- current weights
    def current_denoiser(self) -> torch.nn.Module:
        """A CPU copy of the learner's current generator (what the next iteration will sample from)."""
        cfg = self.config
        weights = self.learner_group.get_weights()[DEFAULT_MODULE_ID]
        model = cfg.task_spec().build_denoiser(generator_spec(cfg))
        prefix = "denoiser."
        state = {k[len(prefix) :]: torch.as_tensor(v) for k, v in weights.items() if k.startswith(prefix)}
        model.load_state_dict(state)
        return model.eval()

    def validation_metrics(self, num_samples: int | None = None, seed: int | None = None) -> dict[str, float]:
        """The task's validation signal of fresh samples from the current model (:meth:`Task.validate_model`):
        the only figures a selection (tuning, early stopping) may read, never an evaluation signal; {} for a task
        without one. Its samples are oracle calls, counted in ``sepo/validation_calls`` (lifetime)."""
        cfg = self.config
        num = int(num_samples or cfg.validation_samples)
        figures = cfg.task_spec().validate_model(
            self.current_denoiser(), num, cfg.denoise_steps, cfg.corrector_steps, seed
        )
        self._validation_calls += num if figures else 0
        return figures

    # ---------------------------------------------------------------------------------- checkpointing
    def get_state(self, *args, **kwargs):
        """RLlib's state (the module, the critic's included, and the learner's optimisers) plus SEPO's own: the
        running baseline and the random-number state of every sampler and learner, so that a resumed run draws
        what the uninterrupted run would have drawn."""
        state = super().get_state(*args, **kwargs)
        state["sepo_baseline"] = self._baseline
        state["sepo_validation_calls"] = self._validation_calls
        state["sepo_async_pending"] = self._async.pending() if self._async else 0
        state["sepo_rng"] = {
            "runners": dict(self.env_runner_group.foreach_env_runner(runner_rng_state)),
            "learners": [r.get() for r in self.learner_group.foreach_learner(learner_rng_state)],
        }
        return state

    def set_state(self, state) -> None:
        super().set_state(state)
        if "sepo_baseline" in state:
            self._baseline = state["sepo_baseline"]
        self._validation_calls = int(state.get("sepo_validation_calls", 0))
        self.restored_pending = int(state.get("sepo_async_pending", 0))
        rng = state.get("sepo_rng")
        if rng:
            self.env_runner_group.foreach_env_runner(partial(set_runner_rng_state, states=rng["runners"]))
            if rng["learners"]:
                self.learner_group.foreach_learner(partial(set_learner_rng_state, state=rng["learners"][0]))
