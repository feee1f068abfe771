"""Benchmarks, printed as JSON: ``sepo-ray bench [--only A,B] [--output FILE] [--seeds N] [--quick]``.

A registry maps a name to a function ``fn(args) -> dict`` (JSON-able); each entry's result also records the
machine (CPU model, cores, torch threads, GPU if any) and its wall time; ``--quick`` (or SEPO_BENCH_QUICK=1)
shrinks every size for a smoke run. Timings are ratios measured side by side in one run (interleaved
repeats, medians, torch on one thread), so that a loaded machine moves both sides alike; each timing entry
also records the 1-minute load average at its start and carries a ``note`` saying what would move it.
Sizes come from the settings schema (``sepo_ray.settings``) and the default task's L and m; the networks are
randomly initialised ``ConvDenoiser``s of the stated size. Entries (add one with ``@register("name")``), one
module each:

- ``fidelity`` (:mod:`.fidelity`): gradient fidelity of the SEPO estimators on the exact toy;
- ``sampler_overhead`` (:mod:`.sampler`): T-step sampling time / (T x one denoiser forward at the same batch);
- ``learner_forwards_per_update`` (:mod:`.learner`): denoiser forwards per update of our learner (the engine's
  own ``sepo_ray.sepo.update``) and of the published code's scheme (github.com/ozekri/SEPO) at equal B, G, M
  and epochs, counted by a wrapper on every denoiser and checked against formulas (full length on a
  shape-only stand-in network, L = 16 on a small CNN), the learner time ratio measured side by side (L = 16 on
  a CPU; also full length when a GPU is present) and the paired gradient fidelity of the two estimators;
- ``ray_overhead`` (:mod:`.ray_bench`): rollout throughput through an EnvRunner + the reward-oracle actor /
  the same module and reward in-process; ``rollout_scaling``: throughput of 2 EnvRunners / (2 x one), the
  same Ray session;
- ``iteration`` (:mod:`.iteration`): where one iteration of the default ``run dna`` spends its time (sampling,
  reward calls, learner forward / backward / step, broadcast, evaluation, other) and ``iteration_over_sampling``;
- ``async`` (:mod:`.async_bench`): oracle calls per second of the synchronous and the asynchronous loop at
  oracle latencies of 0, 0.5 and 2 s, and their ``speedup``;
- ``gpu_throughput`` (:mod:`.gpu`): sequences/s of the DRAKES-size generator (hidden 128, 4 stacks, T = 128,
  the default task's L) at the best batch, fp32 / tf32 / bf16 (``{"skipped": "no GPU"}`` without one).

:mod:`.common` holds the registry, machine info, timing and the forward-counting wrapper; the command line is
:mod:`sepo_ray.cli.bench`.
"""

from .common import (
    BENCHMARKS,
    QUICK_ENV,
    CountingDenoiser,
    ForwardTally,
    ShapeOnlyDenoiser,
    is_quick,
    machine_info,
    register,
)

# entry modules, imported in registry order (the order `--only`-less runs and the JSON follow)
from .fidelity import (  # isort: skip
    FIDELITY_DEFAULTS,
    cosine,
    estimator_gradient,
    estimator_rows,
    exact_identity_rel_err,
    fidelity_seed,
    flat_grad,
    make_fidelity_toy,
    run_fidelity,
)
from .sampler import sampler_overhead_row  # isort: skip
from .learner import UpdateSettings, count_formulas, learner_comparison  # isort: skip
from .ray_bench import ray_rollout_measurements  # isort: skip
from .gpu import GPU_MODES, gpu_throughput_run  # isort: skip
from .iteration import iteration_split  # isort: skip
from .async_bench import async_speedup  # isort: skip

__all__ = [
    "BENCHMARKS",
    "FIDELITY_DEFAULTS",
    "GPU_MODES",
    "QUICK_ENV",
    "CountingDenoiser",
    "ForwardTally",
    "ShapeOnlyDenoiser",
    "UpdateSettings",
    "cosine",
    "count_formulas",
    "estimator_gradient",
    "estimator_rows",
    "exact_identity_rel_err",
    "fidelity_seed",
    "flat_grad",
    "gpu_throughput_run",
    "is_quick",
    "iteration_split",
    "async_speedup",
    "learner_comparison",
    "machine_info",
    "make_fidelity_toy",
    "ray_rollout_measurements",
    "register",
    "run_fidelity",
    "sampler_overhead_row",
]
