"""``ray_overhead`` and ``rollout_scaling``: rollout throughput through Ray, measured in one Ray session.

``ray_overhead``: sequences/s through an EnvRunner + the reward-oracle actor / the same module and reward
in-process; ``rollout_scaling``: throughput of 2 EnvRunners / (2 x one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch

from .common import conv_denoiser, is_quick, load_avg, register, seconds, summary

#: The reward both sides score with: cheap, so that the figures measure Ray and not the reward.
REWARD_SPEC = "sepo_ray.benchmarks.ray_bench:repeat_fraction"


def repeat_fraction(sequences: Sequence[str]) -> np.ndarray:
    """Stand-in reward: the fraction of each sequence's characters equal to its first (float64 (N,))."""
    return np.array([s.count(s[0]) / len(s) if s else 0.0 for s in sequences], dtype=np.float64)


_RAY_RESULTS: dict[bool, dict] = {}


def _runner_sample(runner):
    """EnvRunner.sample() (module level: a foreach function must not capture an object holding the group)."""
    return runner.sample()


def _runner_threads(runner) -> int:
    return torch.get_num_threads()


def _runner_generate_s(runner) -> float:
    """Seconds of the RLModule's generate(n) timed inside the runner process (no RLlib loop, no transfer)."""
    n = int(runner.config.num_envs_per_env_runner)
    start = time.perf_counter()
    with torch.no_grad():
        runner.module.generate(n)
    return time.perf_counter() - start


def _completed(results) -> int:
    return sum(1 for episodes in results for e in episodes if len(e) > 0)


def ray_rollout_measurements(args: argparse.Namespace) -> dict:
    """Sequences/s through 2 EnvRunners + 1 reward-oracle actor vs. the same module and reward in-process.

    One SEPO algorithm, num_env_runners = 2 (num_cpus 1 each), oracle_actors = 1 (num_cpus 0), the default
    task with a random ConvDenoiser (hidden 64, 2 stacks: the shipped generator's size) written to a temporary
    file as its generator and the cheap reward :func:`repeat_fraction`; each runner samples n = B G / 2 sequences per
    call. Per round (rotated order): the module's ``generate(n)`` + decode + reward in the driver; one
    runner alone (alternating 1 and 2); both runners at once; the reward actor's round trip on n sequences.
    """
    quick = is_quick(args)
    if quick in _RAY_RESULTS:
        return _RAY_RESULTS[quick]
    import tempfile

    import ray
    from ray.rllib.core.columns import Columns

    from sepo_ray.models import save_model
    from sepo_ray.oracles.pool import RewardPool, resolve_reward
    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.runtime import init_ray

    load = load_avg()
    started = init_ray(num_cpus=2, announce=False)
    if quick:
        hidden, stacks = 16, 1
        sepo_kw = dict(prompts_per_batch=2, group_size=2, denoise_steps=4, snis_samples=1, kl_steps=2)
        repeats = 1
    else:
        hidden, stacks = 64, 2
        sepo_kw = dict(prompts_per_batch=2, group_size=4, denoise_steps=16, snis_samples=4, kl_steps=2)
        repeats = 3
    tmp = tempfile.TemporaryDirectory()
    try:
        path = save_model(conv_denoiser(hidden, stacks), os.path.join(tmp.name, "generator.safetensors"))
        config = (
            SEPOConfig()
            .sepo(generator=str(path), reward=REWARD_SPEC, oracle_actors=1, **sepo_kw)
            .env_runners(num_env_runners=2, num_cpus_per_env_runner=1)
            .debugging(seed=0)
        )
        build_start = time.perf_counter()
        algo = config.build_algo()
        build_s = time.perf_counter() - build_start
        try:
            group = algo.env_runner_group
            n = algo.config.num_envs_per_env_runner
            module = algo.get_module()
            reward = resolve_reward(REWARD_SPEC)
            pool = RewardPool.connect(**algo.config.env_config["reward_pool"])
            task = module.task
            decode = task.decode

            def in_process():
                with torch.no_grad():
                    out = module.generate(n)
                reward(decode(out[Columns.ACTIONS]))

            seqs = decode(torch.randint(0, task.num_tokens, (n, task.length)))
            counts: dict[str, list[int]] = {"single": [], "both": []}

            def via(ids, key):
                counts[key].append(
                    _completed(
                        group.foreach_env_runner(
                            _runner_sample, remote_worker_ids=ids, local_env_runner=False
                        )
                    )
                )

            threads = group.foreach_env_runner(_runner_threads, local_env_runner=False)
            in_process()  # warm-ups
            via([1], "single")
            via([2], "single")
            via([1, 2], "both")
            counts = {"single": [], "both": []}
            runs: dict[str, list[float]] = {
                "in_process": [],
                "single_runner": [],
                "both_runners": [],
                "reward_actor": [],
                "reward_in_process": [],
                "generate_inside_runner": [],
            }
            for rep in range(repeats):
                jobs = [
                    ("in_process", in_process),
                    ("single_runner", lambda rep=rep: via([1 + rep % 2], "single")),
                    ("both_runners", lambda: via([1, 2], "both")),
                    ("reward_actor", lambda: pool.score(seqs)),
                    ("reward_in_process", lambda: reward(seqs)),
                ]
                inside = group.foreach_env_runner(
                    _runner_generate_s, remote_worker_ids=[1 + rep % 2], local_env_runner=False
                )
                runs["generate_inside_runner"].append(inside[0])
                k = rep % 3
                for name, fn in jobs[k:3] + jobs[:k] + jobs[3:]:
                    runs[name].append(seconds(fn))
        finally:
            algo.stop()
    finally:
        tmp.cleanup()
        if started:
            ray.shutdown()
    med = {k: statistics.median(v) for k, v in runs.items()}
    single_seqs = statistics.median(counts["single"])
    both_seqs = statistics.median(counts["both"])
    thr = {
        "in_process": n / med["in_process"],
        "single_runner": single_seqs / med["single_runner"],
        "both_runners": both_seqs / med["both_runners"],
    }
    result = {
        "sequences_per_s": {k: round(v, 3) for k, v in thr.items()},
        "seconds": {k: summary(v) for k, v in runs.items()},
        "sequences_per_call": {"in_process": n, "single_runner": single_seqs, "both_runners": both_seqs},
        "runner_torch_threads": threads,
        "build_algo_s": round(build_s, 2),
        "settings": {
            "task": f"{task.name} (L = {task.length}, m = {task.num_tokens}) with a random ConvDenoiser generator",
            "hidden": hidden,
            "stacks": stacks,
            **sepo_kw,
            "num_env_runners": 2,
            "num_cpus_per_env_runner": 1,
            "oracle_actors": 1,
            "reward": REWARD_SPEC,
            "sequences_per_runner_call": n,
            "repeats": repeats,
        },
        "load_avg_1m_at_start": load,
        "quick": quick,
    }
    _RAY_RESULTS[quick] = result
    return result


@register("ray_overhead")
def ray_overhead(args: argparse.Namespace) -> dict:
    """Rollout throughput through one EnvRunner + the oracle actor / the same module and reward in-process."""
    r = ray_rollout_measurements(args)
    med = {k: v["median"] for k, v in r["seconds"].items()}
    return {
        "ratio": round(r["sequences_per_s"]["single_runner"] / r["sequences_per_s"]["in_process"], 4),
        "overhead_s_per_call": round(med["single_runner"] - med["in_process"], 4),
        "rllib_and_transfer_s_per_call": round(med["single_runner"] - med["generate_inside_runner"], 4),
        "reward_actor_roundtrip_s": r["seconds"]["reward_actor"]["median"],
        "reward_in_process_s": r["seconds"]["reward_in_process"]["median"],
        **r,
        "note": (
            "ratio = sequences/s of one EnvRunner.sample() call (RLModule.generate on the runner, one batched "
            "reward-actor call in the vectorised env step, episodes returned to the driver) / sequences/s of the "
            "same generate(n) + reward in the driver; 1.0 = Ray adds nothing. overhead_s_per_call is the absolute "
            "cost per rollout call; rllib_and_transfer_s_per_call = single-runner call - generate(n) timed inside "
            "the runner, i.e. RLlib's env-runner loop and connectors, the actor round trip and shipping the "
            "episodes with their old-policy columns to the driver; the rest of the overhead is the runner "
            "process computing slower than the driver (CPU contention). It is a fixed cost, so the ratio goes to 1 as the "
            "per-call work grows (more sequences per runner, longer T, bigger generator) and drops for toy-sized "
            "calls. Moved by: sequences per runner call (amortises the fixed cost), the size of the extra columns "
            "(snis_sites N K (m-1) M, kl_states N S L), the reward's own cost and placement (an oracle on a GPU "
            "actor is faster than in-process on a CPU), and load from other processes on the 2 shared cores."
        ),
    }


@register("rollout_scaling")
def rollout_scaling(args: argparse.Namespace) -> dict:
    """Throughput with 2 rollout workers / (2 x one worker), same runners, same per-runner batch (weak scaling)."""
    r = ray_rollout_measurements(args)
    thr = r["sequences_per_s"]
    return {
        "ratio": round(thr["both_runners"] / (2 * thr["single_runner"]), 4),
        "ideal": 1.0,
        "cores": os.cpu_count(),
        "sequences_per_s": {k: thr[k] for k in ("single_runner", "both_runners")},
        "seconds": {k: r["seconds"][k] for k in ("single_runner", "both_runners")},
        "sequences_per_call": {k: r["sequences_per_call"][k] for k in ("single_runner", "both_runners")},
        "measured_with": "the Ray session of ray_overhead (one algorithm, interleaved rounds)",
        **{k: r[k] for k in ("runner_torch_threads", "settings", "load_avg_1m_at_start", "quick")},
        "note": (
            "ratio = sequences/s with both EnvRunners sampling at once / (2 x sequences/s of one runner alone), "
            "the same two runner processes and per-runner batch, interleaved (weak scaling: each runner samples "
            "B G / 2 per call). Each runner has num_cpus = 1 and one torch thread, so on this 2-core machine the "
            "ideal is 1.0; the driver waits idle, the reward actor (num_cpus 0) takes a little CPU per call. "
            "Below 1.0: the two runners contend for the 2 cores with the driver, the reward actor, Raylet and "
            "other processes on the machine (shared here, see load_avg_1m_at_start), and memory bandwidth. On a "
            "cluster with one GPU or enough cores per runner the ratio stays near 1 until the learner or the "
            "reward actors become the bottleneck (add oracle actors) or the weight broadcast dominates."
        ),
    }
