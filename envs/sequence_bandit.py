"""Sequence generation as a vectorised, single-step contextual bandit.

One episode = one whole generated sequence: the policy (the diffusion sampler inside the RLModule) emits the
complete token sequence as its action, the environment scores it, and the episode ends. Never one env step
per denoising step: RLlib costs milliseconds per env step, the sampler's T steps live inside the module.

The environment is a ``gymnasium.vector.VectorEnv`` over ``num_envs`` sub-environments, so one ``step``
scores the whole batch with ONE call to the reward (an in-process callable or the Ray actor pool), never one
call per sequence. Autoreset follows ``AutoresetMode.NEXT_STEP``: the step after an episode ends is a reset
step. Observations are ``[terminal_flag, prompt_id, prompt tokens]``: the module samples only for rows whose
flag is 0, so the reset step costs nothing. For a task with prompts (``task.prompt_length`` P > 0) each group of
G consecutive sub-environments gets one prompt (a GRPO group = G completions of one prompt); the module clamps
it in the sampler, and the reward sees prompt + completion (the whole sequence).

A reward that fails (wrong count, non-finite, raised, actor gone for good) does not crash the rollout worker
(RLlib would restart it and try again forever): the rewards become NaN and ``infos["reward_error"]`` carries
the message, which the algorithm turns into a clear error naming the reward.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space


class SequenceBanditEnv(VectorEnv):
    """Vectorised bandit: action = a token sequence (L,), reward = one float from the reward.

    ``config`` keys: ``num_envs`` (set by RLlib), ``task`` (a task name or ``module:TaskClass``: its length L,
    vocabulary m and ``decode``, which turns tokens into what the reward sees), either ``reward_pool`` (the
    address dict of a :class:`sepo_ray.oracles.pool.RewardPool`) or ``reward`` (a reward spec scored
    in-process), and ``reward_timeout_s`` (seconds one batched reward call may take, in either path; None:
    the pool's own, no limit in-process).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        from sepo_ray.tasks import get_task

        self.num_envs = int(config.get("num_envs", 1))
        self.task = get_task(config["task"])
        self.length = int(self.task.length)
        self.num_tokens = int(self.task.num_tokens)
        self._pool_address = config.get("reward_pool")
        self._reward_spec = config.get("reward")
        if self._pool_address is None and not self._reward_spec:
            raise ValueError("SequenceBanditEnv needs `reward_pool` or `reward` in its config")
        timeout = config.get("reward_timeout_s")
        self._timeout_s = None if timeout is None else float(timeout)
        self._scorer = None
        # Prompts (tasks with task.prompt_length P > 0): each group of G consecutive sub-environments gets one
        # prompt, drawn from the task's training prompts (or the config's prompts_file) with this env's (seeded)
        # random generator.
        self.prompt_length = int(getattr(self.task, "prompt_length", 0) or 0)
        self.group_size = int(config.get("group_size", 1))
        self._prompts = None
        self._prompt_ids = np.zeros(self.num_envs, np.int64)
        if self.prompt_length:
            if self.num_envs % self.group_size:
                raise ValueError(
                    f"num_envs={self.num_envs} must be a multiple of group_size={self.group_size}"
                )
            if config.get("prompts_file"):  # the user's own prompts (checked by SEPOConfig.validate)
                from sepo_ray.tasks import read_prompt_file

                prompts = self.task.encode_prompts(read_prompt_file(config["prompts_file"]))
            else:
                prompts = self.task.prompts("train")
            self._prompts = np.asarray(prompts, dtype=np.float32)  # (num_prompts, P)
        self.single_observation_space = gym.spaces.Box(0.0, np.inf, (2 + self.prompt_length,), np.float32)
        self.single_action_space = gym.spaces.MultiDiscrete(np.full(self.length, self.num_tokens))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._done = True
        self.num_reward_calls = 0

    @property
    def reward_spec(self) -> str:
        return self._pool_address["spec"] if self._pool_address is not None else self._reward_spec

    def _score(self, sequences: list[str]) -> np.ndarray:
        if self._scorer is None:
            if self._pool_address is not None:
                from sepo_ray.oracles.pool import RewardPool

                address = dict(self._pool_address)
                if self._timeout_s is not None:
                    address["timeout_s"] = self._timeout_s
                self._scorer = RewardPool.connect(**address).score
            else:
                from sepo_ray.oracles.pool import resolve_reward

                self._scorer = resolve_reward(self._reward_spec, timeout_s=self._timeout_s)
        self.num_reward_calls += 1
        return self._scorer(sequences)

    def decode(self, actions: np.ndarray) -> list[str]:
        """Token array (N, L) -> what the reward sees (the task's ``decode``)."""
        return self.task.decode(np.asarray(actions, dtype=np.int64))  # (N, L) -> N sequences

    def _obs(self, terminal: bool) -> np.ndarray:
        """(N, 2 + P): [terminal_flag, prompt_id, prompt tokens (MASK-padded; P = 0 without prompts)]."""
        obs = np.zeros((self.num_envs, 2 + self.prompt_length), np.float32)
        obs[:, 0] = float(terminal)
        if self._prompts is not None:
            obs[:, 1] = self._prompt_ids
            obs[:, 2:] = self._prompts[self._prompt_ids]  # (N, P) token ids, exact in float32 below 2**24
        return obs

    def rng_state(self) -> dict:
        """The state of the generator that draws the prompts (checkpointed, for an exact resume)."""
        return self.np_random.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        """Restore :meth:`rng_state`; RLlib's seeded first reset after a restore then keeps it."""
        self.np_random.bit_generator.state = state
        self._keep_rng = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None and not getattr(self, "_keep_rng", False):
            self._np_random, self._np_random_seed = gym.utils.seeding.np_random(seed)
        self._keep_rng = False
        if self._prompts is not None:  # one prompt per group of G consecutive sub-environments
            groups = self.np_random.integers(0, len(self._prompts), size=self.num_envs // self.group_size)
            self._prompt_ids = np.repeat(groups, self.group_size)  # (N,)
        self._done = False
        return self._obs(False), {}

    def step(self, actions):
        n = self.num_envs
        if self._done:  # NEXT_STEP autoreset: this step only resets every sub-environment
            obs, infos = self.reset()
            return obs, np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), infos
        from sepo_ray.oracles.pool import RewardError

        actions = np.asarray(actions).reshape(n, self.length)
        infos: dict[str, Any] = {}
        try:
            rewards = np.asarray(self._score(self.decode(actions)), dtype=np.float64)
        except RewardError as e:
            rewards = np.full(n, np.nan)
            infos = {"reward_error": np.array([str(e)] * n, dtype=object), "_reward_error": np.ones(n, bool)}
        self._done = True
        return self._obs(True), rewards, np.ones(n, bool), np.zeros(n, bool), infos
