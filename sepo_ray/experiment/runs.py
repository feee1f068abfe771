"""An experiment's fine-tuning runs: one run per (entry, training seed) through the one training loop
(:func:`sepo_ray.training.train`), to the largest budget, with a checkpoint at every budget it is evaluated at."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from sepo_ray.resolve import resolve_settings
from sepo_ray.rundir import checkpoint_path, read_record, same_settings


def run_dir(out: Path, entry: str, seed: int) -> Path:
    return out / "runs" / entry / f"seed{seed}"


def wanted_settings(task, entry, tuned: Mapping, cli: Mapping, seed: int, every: int):
    """The resolved settings of ``entry``'s run at ``seed``: the benchmark's reward, the method's settings, the
    tuned values, then the command line's, checkpointing every ``every`` iterations."""
    return resolve_settings(
        task,
        benchmark=True,
        method=entry.settings,
        tuned=tuned,
        cli={**cli, "seed": seed, "checkpoint_frequency": every},
    )


def train_runs(
    task, out: Path, entry, tuned: Mapping, cli: Mapping, seeds: Sequence[int], iterations: int, every: int,
    num_cpus: int | None = None,
) -> dict[int, dict]:  # fmt: skip
    """Each seed's run of ``entry`` to ``iterations`` (reused when finished, resumed when not, refused when trained
    with other settings); returns {seed: result.json record}."""
    from sepo_ray.training import run_settings, train

    records = {}
    for seed in seeds:
        folder = run_dir(out, entry.name, seed)
        record = read_record(folder)
        wanted = wanted_settings(task, entry, tuned, cli, seed, every)
        if record is not None and not same_settings(record, wanted):
            raise ValueError(
                f"{folder} was trained with other settings than this experiment asks for ({entry.name}, seed {seed}): "
                "use another --output or move that run aside"
            )
        done = record is not None and record["history"] and record["history"][-1]["iteration"] >= iterations
        if done:
            print(f"== {entry.name} seed {seed}: finished run in {folder}", flush=True)
        else:
            start = record["history"][-1]["iteration"] if record and record["history"] else 0
            print(f"== training {entry.name} seed {seed}: iterations {start + 1}..{iterations}", flush=True)
            t0 = time.time()
            if record is None:
                settings, previous = run_settings(
                    task, folder, benchmark=True, method=entry.settings, tuned=tuned,
                    cli={**cli, "seed": seed, "checkpoint_frequency": every},
                )  # fmt: skip
            else:
                settings, previous = run_settings(
                    task, folder, resume=True, cli={"checkpoint_frequency": every}
                )
            record = train(task, folder, iterations, settings, previous, evaluate=False, num_cpus=num_cpus)
            print(f"== trained {entry.name} seed {seed} in {time.time() - t0:.0f} s", flush=True)
        records[seed] = record
    return records


def checkpoint_generator(task, folder: Path, record: dict, iteration: int) -> Path:
    """The generator file of the run's checkpoint at ``iteration``; ValueError when the run has none there."""
    entry = f"checkpoints/iter_{iteration:04d}"
    if not any(Path(c).as_posix().endswith(entry) for c in record.get("checkpoints", [])):
        raise ValueError(
            f"{folder} has no checkpoint at iteration {iteration} (it has {record.get('checkpoints')}); this "
            "budget needs one: use another --output"
        )
    return task.generator_file(checkpoint_path(folder, entry))
