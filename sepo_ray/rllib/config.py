"""SEPOConfig: an RLlib ``AlgorithmConfig`` whose defaults are the embedded DNA task.

``SEPOConfig()`` with no arguments fine-tunes the pretrained DNA generator against the fine-tuning oracle, so
``SEPOConfig().build_algo().train()`` works as any RLlib user would try it. SEPO's own settings are set with
``config.sepo(...)`` (or ``config.training(...)``, which accepts the same names); every field has a default
and a one-line description in :data:`SEPO_FIELDS`. Derived numbers (envs per rollout worker, batch per
learner) are filled in by :meth:`SEPOConfig.validate`, which also checks the cross-field rules and says
which rule broke.
"""

from __future__ import annotations

import gymnasium as gym
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

# name -> (default, one-line description with unit)
SEPO_FIELDS: dict[str, tuple[object, str]] = {
    "task": ("dna", "task name from sepo_ray.tasks (sequence length, alphabet, generator, default reward)"),
    "generator": (None, "generator weights (safetensors path); None = the task's pretrained generator"),
    "reward": (None, "reward spec ('module:function' or a registered oracle name); None = task default"),
    "objective": (
        "sepo",
        "'sepo' (score-entropy loss) or 'trajectory' (DDPO/d1-style baseline on path log-probs)",
    ),
    "clip_eps": (0.2, "PPO clip range epsilon of the ratio r_{x,y} (App. B)"),
    "kl_alpha": (1.0, "weight alpha of KL(pi_theta || pi_pretrained) (App. D.2); 0 disables it"),
    "zero_clipped": (
        True,
        "PPO's gradient: zero where the clipped branch is taken; False = App. B.1 literal",
    ),
    "snis_samples": (1, "SNIS samples M per neighbour y for pi_hat(y) (Sec. 3.1); 0 = single-sample pi"),
    "denoise_steps": (32, "reverse CTMC steps T of the sampler"),
    "corrector_steps": (0, "gradient-flow corrector steps after each predictor step (Sec. 3.3)"),
    "group_size": (8, "GRPO group size G: samples per prompt"),
    "prompts_per_batch": (4, "prompts B per iteration; one iteration samples B * G sequences"),
    "neighbour_positions": (2, "positions K subsampled per sequence for the Hamming-1 sum; None = all L"),
    "score_estimator": ("conditional", "log-score estimator: 'clean' (published code) or 'conditional'"),
    "advantage": ("grpo", "'grpo' (group-standardised reward) or 'ppo' (reward minus a learned baseline)"),
    "kl_steps": (2, "sampler steps per trajectory on which the path KL is evaluated (unbiased subsample)"),
    "oracle_actors": (1, "reward-oracle Ray actors; 0 = score in the rollout worker's process"),
    "oracle_num_gpus": (0.0, "GPUs per reward-oracle actor (fractions allowed)"),
    "oracle_max_restarts": (3, "restarts of a dead reward-oracle actor before the run fails"),
    "heldout_eval_interval": (0, "iterations between held-out evaluations (eval oracle); 0 = never"),
    "heldout_samples": (64, "sequences sampled per held-out evaluation"),
    "checkpoint_frequency": (1, "iterations between checkpoints written by `python -m sepo_ray.run`"),
}

_CHOICES = {
    "score_estimator": ("clean", "conditional"),
    "advantage": ("grpo", "ppo"),
    "objective": ("sepo", "trajectory"),
}


class SEPOConfig(AlgorithmConfig):
    """Configuration of the SEPO algorithm (Score Entropy Policy Optimization) on RLlib's new API stack."""

    def __init__(self, algo_class=None):
        from sepo_ray.rllib.algorithm import SEPO

        super().__init__(algo_class=algo_class or SEPO)
        for name, (default, _) in SEPO_FIELDS.items():
            setattr(self, name, default)
        # RLlib settings (paper App. E.2: Adam, K = 2 epochs; lr as tuned for the CPU-sized default).
        self.lr = 3e-4
        self.num_epochs = 2
        self.minibatch_size = None
        self.shuffle_batch_per_epoch = False
        self.grad_clip = 1.0
        self.num_env_runners = 0
        self.rollout_fragment_length = 1
        self.batch_mode = "truncate_episodes"
        self.sample_timeout_s = 600.0
        self.gym_env_vectorize_mode = gym.VectorizeMode.VECTOR_ENTRY_POINT
        self.restart_failed_env_runners = True
        self.restart_failed_sub_environments = False
        from envs import SequenceBanditEnv

        self.env = SequenceBanditEnv

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

    @property
    def envs_per_runner(self) -> int:
        """Sub-environments (= sequences per sampler call) on each rollout worker."""
        return self.batch_sequences // max(1, int(self.num_env_runners))

    def task_spec(self):
        from sepo_ray.tasks import get_task

        return get_task(self.task)

    def sepo_settings(self) -> dict:
        """The SEPO fields as a plain dict (what the RLModule and the Learner read)."""
        return {name: getattr(self, name) for name in SEPO_FIELDS}

    # -------------------------------------------------------------------------------------- defaults
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        from sepo_ray.rllib.module import SEPOTorchRLModule

        return RLModuleSpec(module_class=SEPOTorchRLModule)

    def get_default_learner_class(self):
        from sepo_ray.rllib.learner import SEPOTorchLearner

        return SEPOTorchLearner

    # ------------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Checks SEPO's cross-field rules, then fills in the derived RLlib settings and runs RLlib's checks."""
        self.validate_sepo()
        task = self.task_spec()
        self.num_envs_per_env_runner = self.envs_per_runner
        self.rollout_fragment_length = 1
        self.train_batch_size_per_learner = self.batch_sequences // max(1, int(self.num_learners))
        self.train_batch_size = self.batch_sequences
        env_config = dict(self.env_config or {})
        env_config.update(length=task.length, num_tokens=task.num_tokens, alphabet=task.alphabet)
        if not env_config.get("reward_pool"):
            env_config["reward"] = self.reward or task.default_reward
        self.env_config = env_config
        model_config = dict(self._model_config or {}) if isinstance(self._model_config, dict) else {}
        model_config.update(sepo=self.sepo_settings(), seed=self.seed)
        self._model_config = model_config
        super().validate()

    def validate_sepo(self) -> None:
        """SEPO-specific rules; each error names the field and the rule it broke."""

        def bad(field: str, why: str):
            raise ValueError(f"SEPOConfig.{field}={getattr(self, field)!r}: {why}")

        from sepo_ray.tasks import TASKS

        if self.task not in TASKS:
            bad("task", f"unknown task; valid tasks: {', '.join(sorted(TASKS))}")
        if not (isinstance(self.clip_eps, (int, float)) and self.clip_eps > 0):
            bad("clip_eps", "the clip range epsilon must be > 0")
        if not (isinstance(self.kl_alpha, (int, float)) and self.kl_alpha >= 0):
            bad("kl_alpha", "the KL weight alpha must be >= 0")
        if not (isinstance(self.snis_samples, int) and self.snis_samples >= 0):
            bad("snis_samples", "M must be an integer >= 0 (0 = single-sample pi, no SNIS)")
        for field in ("denoise_steps", "group_size", "prompts_per_batch", "kl_steps", "heldout_samples"):
            if not (isinstance(getattr(self, field), int) and getattr(self, field) >= 1):
                bad(field, "must be an integer >= 1")
        if not (isinstance(self.corrector_steps, int) and self.corrector_steps >= 0):
            bad("corrector_steps", "must be an integer >= 0")
        if self.kl_steps > self.denoise_steps:
            bad(
                "kl_steps",
                f"cannot exceed denoise_steps={self.denoise_steps} (steps are sampled without replacement)",
            )
        if self.group_size < 2 and self.advantage == "grpo":
            bad("group_size", "GRPO standardises rewards within a group: group_size must be >= 2")
        for field, options in _CHOICES.items():
            if getattr(self, field) not in options:
                bad(field, f"must be one of {options}")
        task = self.task_spec()
        if self.neighbour_positions is not None and not (
            isinstance(self.neighbour_positions, int) and 1 <= self.neighbour_positions <= task.length
        ):
            bad("neighbour_positions", f"must be None (all positions) or an integer in 1..L={task.length}")
        if not (isinstance(self.oracle_actors, int) and self.oracle_actors >= 0):
            bad("oracle_actors", "must be an integer >= 0")
        if not (isinstance(self.oracle_num_gpus, (int, float)) and self.oracle_num_gpus >= 0):
            bad("oracle_num_gpus", "must be >= 0")
        if not (isinstance(self.heldout_eval_interval, int) and self.heldout_eval_interval >= 0):
            bad("heldout_eval_interval", "must be an integer >= 0")
        if not (isinstance(self.checkpoint_frequency, int) and self.checkpoint_frequency >= 1):
            bad("checkpoint_frequency", "must be an integer >= 1")
        runners = max(1, int(self.num_env_runners))
        if self.prompts_per_batch % runners:
            bad(
                "prompts_per_batch",
                f"must be divisible by num_env_runners={self.num_env_runners} so that every rollout worker "
                "samples whole GRPO groups",
            )
        learners = max(1, int(self.num_learners))
        if self.batch_sequences % learners:
            bad("prompts_per_batch", f"B * G must be divisible by num_learners={self.num_learners}")
        if self.minibatch_size is not None:
            raise ValueError(
                "SEPOConfig.minibatch_size must be None: each epoch uses the whole batch of B * G sequences "
                "(the GRPO coefficient averages over whole groups)"
            )
