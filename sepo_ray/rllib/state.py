"""Random-number states of rollout workers and learners, for exact resume (module-level functions: they travel
to remote workers and must not capture the Algorithm)."""

from __future__ import annotations

import numpy as np
import torch


def _runner_env(runner):
    env = getattr(runner, "env", None)
    return getattr(env, "unwrapped", env)


def runner_rng_state(runner) -> tuple[int, tuple]:
    """(worker index, (sampler generator state, environment generator state)): the env draws the prompts."""
    env = _runner_env(runner)
    env_state = env.rng_state() if hasattr(env, "rng_state") else None
    return int(runner.worker_index), (runner.module._rng.get_state().numpy().tobytes(), env_state)


def set_runner_rng_state(runner, states: dict) -> None:
    if int(runner.worker_index) not in states:
        return
    sampler, env_state = states[int(runner.worker_index)]
    runner.module._rng.set_state(torch.from_numpy(np.frombuffer(sampler, dtype=np.uint8).copy()))
    env = _runner_env(runner)
    if env_state is not None and hasattr(env, "set_rng_state"):
        env.set_rng_state(env_state)


def learner_rng_state(learner) -> bytes:
    return learner._noise.get_state().numpy().tobytes()


def set_learner_rng_state(learner, state: bytes) -> None:
    learner._noise.set_state(torch.from_numpy(np.frombuffer(state, dtype=np.uint8).copy()))


def seed_runner(runner, seed) -> None:
    """Seed a rollout worker's sampler by its index (``module.sampler_seed``): remote workers must not draw the
    same samples (a Ray actor cannot tell its own index when its module is built)."""
    from .module import sampler_seed

    runner.module._rng.manual_seed(sampler_seed(seed, int(runner.worker_index)))
