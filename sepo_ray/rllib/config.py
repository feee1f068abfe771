"""SEPOConfig: an RLlib ``AlgorithmConfig`` whose fields come from the one settings schema.

``SEPOConfig()`` with no arguments fine-tunes the default task's pretrained generator against its default
reward, so ``SEPOConfig().build_algo().train()`` works as any RLlib user would try it. SEPO's own settings are
set with ``config.sepo(...)`` (or ``config.training(...)``, which accepts the same names); every field's
default, unit, help and allowed range are declared once in :mod:`sepo_ray.settings`. Derived numbers (envs per rollout worker, batch per
learner) are filled in by :meth:`SEPOConfig.validate`, which also checks the cross-field rules and says
which rule broke.
"""

from __future__ import annotations

import gymnasium as gym
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from sepo_ray.settings import RLLIB_SETTINGS, SEPO_SETTINGS

#: name -> (default, one-line description): SEPO's own fields, from the one schema (``sepo_ray.settings``)
SEPO_FIELDS: dict[str, tuple[object, str]] = {name: (s.default, s.help) for name, s in SEPO_SETTINGS.items()}
#: Vocabularies larger than this need token proposals (``neighbour_tokens``): all m - 1 would not fit.
MAX_ALL_TOKENS = 256


class SEPOConfig(AlgorithmConfig):
    """Configuration of the SEPO algorithm (Score Entropy Policy Optimization) on RLlib's new API stack."""

    def __init__(self, algo_class=None):
        from sepo_ray.rllib.algorithm import SEPO

        super().__init__(algo_class=algo_class or SEPO)
        for name, setting in SEPO_SETTINGS.items():
            setattr(self, name, setting.default)
        # RLlib settings SEPO checks, with SEPO's defaults (paper App. E.2: Adam, K = 2 epochs; lr as tuned for
        # the CPU-sized default).
        for name in ("lr", "num_epochs", "grad_clip", "num_env_runners"):
            setattr(self, name, RLLIB_SETTINGS[name].default)
        self.minibatch_size = None
        self.shuffle_batch_per_epoch = False
        self.rollout_fragment_length = 1
        self.batch_mode = "truncate_episodes"
        self.sample_timeout_s = 600.0
        self.gym_env_vectorize_mode = gym.VectorizeMode.VECTOR_ENTRY_POINT
        self.restart_failed_env_runners = True
        self.restart_failed_sub_environments = False
        from sepo_ray.envs import SequenceBanditEnv

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
        """The :class:`~sepo_ray.tasks.Task` this config fine-tunes."""
        from sepo_ray.tasks import get_task

        return get_task(self.task)

    def sepo_settings(self) -> dict:
        """The SEPO fields as a plain dict (what the RLModule's sampler reads from its model config)."""
        return {name: getattr(self, name) for name in SEPO_FIELDS}

    def update_spec(self):
        """The pure update's settings (:class:`sepo_ray.sepo.update.UpdateSpec`) for this config's task."""
        from sepo_ray.sepo.update import UpdateSpec

        return UpdateSpec.from_settings(self.sepo_settings(), self.task_spec().num_tokens)

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
        env_config.update(
            task=self.task,
            reward_timeout_s=float(self.reward_timeout_s),
            group_size=int(self.group_size),
            prompts_file=self.prompts_file,
        )
        if not env_config.get("reward_pool"):
            env_config["reward"] = self.reward or task.default_reward
        self.env_config = env_config
        model_config = dict(self._model_config or {}) if isinstance(self._model_config, dict) else {}
        model_config.update(sepo=self.sepo_settings(), seed=self.seed)
        self._model_config = model_config
        super().validate()

    def validate_sepo(self) -> None:
        """Every field's range from the one schema, then SEPO's cross-field rules; errors name the field."""

        def bad(field: str, why: str):
            raise ValueError(f"SEPOConfig.{field}={getattr(self, field)!r}: {why}")

        for name, setting in {**SEPO_SETTINGS, **RLLIB_SETTINGS}.items():
            why = setting.why_invalid(getattr(self, name, setting.default))
            if why is not None:
                bad(name, why)
        try:
            task = self.task_spec()
        except ValueError as e:
            bad("task", str(e))
        if self.kl_steps > self.denoise_steps:
            bad(
                "kl_steps",
                f"cannot exceed denoise_steps={self.denoise_steps} (steps are sampled without replacement)",
            )
        if self.group_size < 2 and self.advantage == "grpo":
            bad("group_size", "GRPO standardises rewards within a group: group_size must be >= 2")
        if self.neighbour_positions is not None and self.neighbour_positions > task.length:
            bad("neighbour_positions", f"must be None (all positions) or an integer in 1..L={task.length}")
        if getattr(task, "prompt_length", 0) and self.corrector_steps:
            bad(
                "corrector_steps",
                "must be 0 for a task with prompts (the corrector would re-mask the prompt)",
            )
        if self.prompts_file is not None:
            if not getattr(task, "prompt_length", 0):
                bad("prompts_file", f"task {task.name!r} takes no prompts")
            from sepo_ray.evaluation import read_prompt_file

            try:
                task.encode_prompts(read_prompt_file(self.prompts_file))
            except ValueError as e:
                bad("prompts_file", str(e))
        if self.neighbour_tokens is None and task.num_tokens - 1 > MAX_ALL_TOKENS:
            bad(
                "neighbour_tokens",
                f"SNIS over all m-1 = {task.num_tokens - 1} tokens per position costs N*K*(m-1)*M denoiser "
                f"forwards; set neighbour_tokens (J proposed tokens per position, e.g. 8) for a vocabulary over "
                f"{MAX_ALL_TOKENS + 1} tokens",
            )
        if self.neighbour_tokens is not None and self.neighbour_tokens > task.num_tokens - 1:
            bad("neighbour_tokens", f"must be None (all m-1) or an integer in 1..m-1={task.num_tokens - 1}")
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
