"""``iteration``: where the time of one training iteration goes, for the default ``run dna`` settings.

One SEPO algorithm with the DNA task's run defaults (resolved as ``run`` resolves them), in process: after one
warm-up iteration, each timed iteration is split by wrapping the algorithm's own steps (nothing else changes):

- ``sampling_s``: the T-step sampler and the rollout's old-policy quantities (the EnvRunner's sampling, minus
  the reward calls made inside it);
- ``reward_s``: the batched reward calls of the environment (through the oracle actors, as in a run);
- ``learner_forward_s`` / ``learner_backward_s`` / ``learner_step_s``: the learner's loss (the module's forward
  passes), its backward pass, and the optimiser step with the finiteness checks, summed over the epochs;
- ``learner_other_s``: the rest of the learner update (its connector pipeline, batching, metrics);
- ``broadcast_s``: the weight broadcast to the rollout workers; ``evaluation_s``: held-out evaluations;
- ``other_s``: what is left (advantages, metrics, Python).

``iteration_over_sampling`` is the iteration's time divided by the time to sample (and score) its batch once.
``trajectory_steps_4``: the same medians with the cheaper update (4 sampler steps of each path re-scored per epoch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from .common import is_quick, load_avg, register

PHASES = ("sampling", "reward", "learner_forward", "learner_backward", "learner_step", "learner_update",
          "broadcast", "evaluation")  # fmt: skip


def _timed(fn: Callable, seconds: dict, phase: str) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[phase] += time.perf_counter() - start

    return wrapper


def split_iterations(settings, iterations: int) -> list[dict]:
    """Build the algorithm of ``settings`` (a resolved :class:`~sepo_ray.resolve.Settings`, in process), run one
    warm-up and ``iterations`` timed iterations; -> one dict of seconds per phase and iteration."""
    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.rllib import algorithm as algorithm_module

    algo = SEPOConfig.from_settings(settings).build_algo()
    seconds = dict.fromkeys(PHASES, 0.0)
    sample_sync = algorithm_module.sample_sync
    try:
        learner = algo.learner_group._learner  # in process: num_learners = 0
        env = algo.env_runner.env.unwrapped
        algorithm_module.sample_sync = _timed(sample_sync, seconds, "sampling")
        algo.validation_metrics = _timed(algo.validation_metrics, seconds, "evaluation")
        algo.env_runner_group.sync_weights = _timed(algo.env_runner_group.sync_weights, seconds, "broadcast")
        algo.learner_group.update = _timed(algo.learner_group.update, seconds, "learner_update")
        env._score = _timed(env._score, seconds, "reward")
        learner.compute_losses = _timed(learner.compute_losses, seconds, "learner_forward")
        learner.compute_gradients = _timed(learner.compute_gradients, seconds, "learner_backward")
        learner.apply_gradients = _timed(learner.apply_gradients, seconds, "learner_step")
        algo.train()  # warm-up: first-call costs (threads, allocator, the oracle actor's model)
        rows = []
        for _ in range(iterations):
            for phase in seconds:
                seconds[phase] = 0.0
            start = time.perf_counter()
            algo.train()
            total = time.perf_counter() - start
            learner_parts = seconds["learner_forward"] + seconds["learner_backward"] + seconds["learner_step"]
            row = {
                "iteration_s": total,
                "sampling_s": seconds["sampling"] - seconds["reward"],
                "reward_s": seconds["reward"],
                "learner_forward_s": seconds["learner_forward"],
                "learner_backward_s": seconds["learner_backward"],
                "learner_step_s": seconds["learner_step"],
                "learner_other_s": seconds["learner_update"] - learner_parts,
                "broadcast_s": seconds["broadcast"],
                "evaluation_s": seconds["evaluation"],
            }
            row["other_s"] = total - sum(v for k, v in row.items() if k != "iteration_s")
            row["iteration_over_sampling"] = total / max(seconds["sampling"], 1e-9)
            rows.append(row)
        return rows
    finally:
        algorithm_module.sample_sync = sample_sync
        algo.stop()


@register("iteration")
def iteration_split(args: argparse.Namespace) -> dict:
    """Median seconds per phase over the timed iterations of the default ``run dna`` settings (``--quick``: a
    tiny batch and T), each iteration's split, and ``iteration_over_sampling``."""
    from sepo_ray.resolve import resolve_settings
    from sepo_ray.runtime import init_ray
    from sepo_ray.tasks import get_task

    quick = is_quick(args)
    cli = {"prompts_per_batch": 2, "group_size": 2, "denoise_steps": 4} if quick else {}
    cli.update(getattr(args, "settings", None) or {})
    settings = resolve_settings(get_task("dna"), cli=cli)
    load = load_avg()
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # as a run has them (the other benchmarks time on one thread)
    started = init_ray(num_cpus=2, announce=False)
    cheaper = None
    try:
        rows = split_iterations(settings, 1 if quick else 3)
        if not quick and "trajectory_steps" not in cli:  # the same split with the cheaper update
            cheaper = split_iterations(
                resolve_settings(get_task("dna"), cli={**cli, "trajectory_steps": 4}), 3
            )
    finally:
        torch.set_num_threads(threads)
        if started:
            import ray

            ray.shutdown()
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {
        **{k: round(v, 4) for k, v in median.items()},
        "iterations": [{k: round(v, 4) for k, v in r.items()} for r in rows],
        "settings": {
            k: settings[k]
            for k in (
                "objective",
                "prompts_per_batch",
                "group_size",
                "denoise_steps",
                "num_epochs",
                "trajectory_steps",
                "kl_steps",
            )
        },  # fmt: skip
        "sequences_per_iteration": int(settings["prompts_per_batch"]) * int(settings["group_size"]),
        "load_avg_1min": load,
        "torch_threads": os.cpu_count() or 1,
        "note": "seconds of one iteration of the default `run dna` (in process, 2 CPUs), median over the timed "
        "iterations after one warm-up; machine load moves every figure, the split shows the shares",
        **({"trajectory_steps_4": _median(cheaper)} if cheaper else {}),
    }


def _median(rows: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in rows), 4) for k in rows[0]}
