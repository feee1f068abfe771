"""``async``: reward-oracle calls per second of the synchronous and the asynchronous actor-learner loop, at
oracle latencies of 0, 0.5 and 2 s per batched call, and the held-out quality each reaches in the same updates.

Both loops run the DNA task's run defaults with the cheaper update (``trajectory_steps`` 4, so that the learner
does not dominate an iteration and the bench fits 15 minutes on 2 cores) on the same resources: 4 rollout workers at half a CPU each (one
prompt's group each) and 4 reward-oracle actors, so that sampling, scoring and the learner can overlap, with the
default reward behind a stand-in latency (:class:`DelayedReward`: a real oracle on another machine, a slow
model, a wet-lab simulator); the synchronous one with ``max_staleness`` 0, the asynchronous one with 2. After
one warm-up iteration each runs the same number of updates; calls per second = the oracle calls charged during
them (every sequence sampled, used or not) / their wall time. ``speedup[latency]`` = asynchronous /
synchronous calls per second (> 1: faster); ``used_speedup`` the same for the sequences the updates used. The validation score and realism are the task's (64 fresh samples
after the last update): one seed, a first reading, not a comparison.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from .common import is_quick, load_avg, register

LATENCIES = (0.0, 0.5, 2.0)
RUNNERS, ASYNC_STALENESS = 4, 2


class DelayedReward:
    """The DNA task's default run reward, answering ``seconds`` late (built on first use, in the oracle actor)."""

    def __init__(self, seconds: float, spec: str = "dna_ft_accessible"):
        self.seconds, self.spec, self.reward = float(seconds), spec, None

    def __call__(self, sequences) -> np.ndarray:
        from sepo_ray.oracles.pool import resolve_reward

        if self.reward is None:
            self.reward = resolve_reward(self.spec)
        time.sleep(self.seconds)
        return self.reward(sequences)


dna_reward_0s, dna_reward_0_5s, dna_reward_2s = DelayedReward(0.0), DelayedReward(0.5), DelayedReward(2.0)
REWARDS = {0.0: "dna_reward_0s", 0.5: "dna_reward_0_5s", 2.0: "dna_reward_2s"}


def measure(settings, iterations: int, validation_samples: int) -> dict:
    """Oracle calls per second over ``iterations`` updates after one warm-up, and the held-out figures after."""
    from sepo_ray.rllib import SEPOConfig

    algo = SEPOConfig.from_settings(settings).build_algo()
    try:
        calls0 = int(algo.train()["num_env_steps_sampled_lifetime"])
        start = time.perf_counter()
        for _ in range(iterations):
            result = algo.train()
        wall = time.perf_counter() - start
        calls = int(result["num_env_steps_sampled_lifetime"]) - calls0
        heldout = algo.validation_metrics(num_samples=validation_samples, seed=0)
        staleness = float(result.get("sepo", {}).get("async_staleness_mean", 0.0))
    finally:
        algo.stop()
    used = iterations * int(settings["prompts_per_batch"]) * int(settings["group_size"])
    return {"calls": calls, "wall_s": round(wall, 2), "calls_per_s": round(calls / wall, 3),
            "used_per_s": round(used / wall, 3),
            "staleness_mean_last": staleness, **{k: round(float(v), 4) for k, v in heldout.items()}}  # fmt: skip


@register("async")
def async_speedup(args: argparse.Namespace) -> dict:
    """``speedup`` (latency in seconds, as a string -> asynchronous / synchronous oracle calls per second) and
    every measurement (``--quick``: two latencies, a tiny batch and T, one update each)."""
    from sepo_ray.resolve import resolve_settings
    from sepo_ray.runtime import init_ray
    from sepo_ray.tasks import get_task

    quick = is_quick(args)
    latencies = LATENCIES[:2] if quick else LATENCIES
    base = {"prompts_per_batch": 4, "group_size": 2, "denoise_steps": 4} if quick else {}
    base["trajectory_steps"] = min(4, base.get("denoise_steps", 32))
    base.update(getattr(args, "settings", None) or {})
    load = load_avg()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the driver's learner and the rollout worker share the 2 cores
    started = init_ray(num_cpus=2, announce=False)
    runs = {}
    try:
        for latency in latencies:
            for mode, k in (("sync", 0), ("async", ASYNC_STALENESS)):
                cli = {"num_env_runners": RUNNERS, "num_cpus_per_env_runner": 2 / RUNNERS, "oracle_actors": RUNNERS,
                       **base, "max_staleness": k, "reward": f"{__name__}:{REWARDS[latency]}"}  # fmt: skip
                settings = resolve_settings(get_task("dna"), cli=cli)
                runs[f"{mode}_{latency:g}s"] = measure(settings, 1 if quick else 4, 16 if quick else 64)
    finally:
        torch.set_num_threads(threads)
        if started:
            import ray

            ray.shutdown()
    used_speedup = {
        f"{latency:g}": round(runs[f"async_{latency:g}s"]["used_per_s"] / runs[f"sync_{latency:g}s"]["used_per_s"], 3)
        for latency in latencies
    }  # fmt: skip
    speedup = {
        f"{latency:g}": round(runs[f"async_{latency:g}s"]["calls_per_s"] / runs[f"sync_{latency:g}s"]["calls_per_s"], 3)
        for latency in latencies
    }  # fmt: skip
    return {
        "speedup": speedup,
        "used_speedup": used_speedup,
        "runs": runs,
        "load_avg_1min": load,
        "cpus": os.cpu_count(),
        "note": f"{RUNNERS} rollout workers, {RUNNERS} oracle actors and the learner in the driver on 2 CPUs; calls/s over the timed updates; "
        "the asynchronous loop may charge samples an update did not use (queued, or dropped as too stale)",
    }
