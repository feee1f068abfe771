"""The frontier's runs and rows: fine-tuning runs with nested checkpoints, and row callables seed -> sequences
(a generator's samples, best-of-N from cached candidate pools, SVDD guidance with every oracle call counted)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from sepo_ray.compare import _file_hash
from sepo_ray.run import RESUMABLE, checkpoint_path, read_record, trained_as


def train_runs(
    task_name: str, out: Path, method: str, overrides: dict, seeds: Sequence[int], iterations: int, every: int
) -> dict[int, dict]:
    """Each seed's run of ``method`` to ``iterations`` with a checkpoint every ``every`` (reused when finished,
    resumed when not, refused when trained with other settings); returns {seed: result.json record}."""
    from sepo_ray.run import train
    from sepo_ray.tasks import get_task

    task = get_task(task_name)
    records = {}
    wanted = {**overrides, "checkpoint_frequency": every}
    for seed in seeds:
        run_dir = out / "runs" / method / f"seed{seed}"
        record = read_record(run_dir)
        if record is not None:
            if record.get("seed") != seed or not trained_as(record, wanted, task, ignore=RESUMABLE):
                raise ValueError(
                    f"{run_dir} was trained with seed {record.get('seed')} and overrides {record.get('overrides')}, "
                    f"this frontier asks for seed {seed} and {wanted}: use another --output or move that run aside"
                )
        done = record is not None and record["history"] and record["history"][-1]["iteration"] >= iterations
        if not done:
            start = record["history"][-1]["iteration"] if record and record["history"] else 0
            print(
                f"== training {method} seed {seed}: iterations {start + 1}..{iterations}, {wanted}",
                flush=True,
            )
            t0 = time.time()
            record = train(
                task_name, run_dir, iterations, seed, wanted, resume=record is not None, evaluate=False
            )
            print(f"== trained {method} seed {seed} in {time.time() - t0:.0f} s", flush=True)
        else:
            print(f"== {method} seed {seed}: finished run in {run_dir}", flush=True)
        records[seed] = record
    return records


def checkpoint_generator(task, run_dir: Path, record: dict, iteration: int) -> Path:
    """The generator file of the run's checkpoint at ``iteration``; ValueError when the run has none there."""
    entry = f"checkpoints/iter_{iteration:04d}"
    if not any(Path(c).as_posix().endswith(entry) for c in record.get("checkpoints", [])):
        raise ValueError(
            f"{run_dir} has no checkpoint at iteration {iteration} (it has {record.get('checkpoints')}); this "
            "budget needs one: use another --output"
        )
    return task.generator_file(checkpoint_path(run_dir, entry))


def _generator_hash(task, source) -> str:
    path = task.generator_file(None if source == "pretrained" else source)
    return _file_hash(path) if path is not None else "built-in"


def sample_row(task, generators: Mapping[int, object], num: int, steps: int) -> Callable[[int], list[str]]:
    """Row callable: seed -> ``num`` samples of that seed's generator (sampling seed = seed)."""
    from sepo_ray.evaluation import load_generator

    def row(seed: int) -> list[str]:
        model = load_generator(task, generators[seed])
        return task.sample(model, num, steps, seed=seed, batch_size=320)

    return row


def pool_chunk(task, model_fn, score, pool_dir: Path, seed: int, chunk: int, num: int, steps: int):
    """Candidate ``chunk`` of ``seed``: ``num`` samples (sampling seed 10000 (seed + 1) + chunk) with their
    fine-tuning-oracle scores, cached as ``pool_dir/seed<s>_chunk<c>.parquet`` (DataFrame: sequence, score)."""
    import pandas as pd

    path = pool_dir / f"seed{seed}_chunk{chunk:04d}.parquet"
    if path.is_file():
        frame = pd.read_parquet(path)
        if len(frame) == num:
            return frame
    seqs = task.sample(model_fn(), num, steps, seed=10_000 * (seed + 1) + chunk, batch_size=320)
    frame = pd.DataFrame({"sequence": seqs, "score": np.asarray(score(seqs), dtype=np.float64)})
    pool_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return frame


def best_of_n_row(task, generators, n: int, num: int, steps: int, reward: str, pools: Path):
    """Row callable: seed -> for each of ``num`` outputs, the best by ``reward`` of its N candidates (candidate c
    of output i is row i of chunk c; chunks are shared by every N of the same generator, so a larger N extends
    a smaller one). A design batch of D outputs spends D * N calls."""
    from sepo_ray.evaluation import load_generator
    from sepo_ray.oracles.pool import resolve_reward

    score = resolve_reward(reward)

    def row(seed: int) -> list[str]:
        source = generators[seed]
        key = f"{_generator_hash(task, source)}_T{steps}_{_file_hash_text(reward)}"
        model = []

        def model_fn():
            if not model:
                model.append(load_generator(task, source))
            return model[0]

        chunks = [pool_chunk(task, model_fn, score, pools / key, seed, c, num, steps) for c in range(n)]
        scores = np.stack([c["score"].to_numpy() for c in chunks], axis=1)  # (num, N)
        pick = scores.argmax(axis=1)  # (num,)
        return [chunks[c]["sequence"].iloc[i] for i, c in enumerate(pick)]

    return row


def _file_hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


class CountingReward:
    """A reward on token tensors that counts every sequence it scores: x (N, L) long -> (N,) float64."""

    def __init__(self, task, reward: str):
        from sepo_ray.oracles.pool import resolve_reward

        self.task, self.reward, self.calls = task, resolve_reward(reward), 0

    def __call__(self, x):
        import torch

        self.calls += int(x.shape[0])
        return torch.as_tensor(np.asarray(self.reward(self.task.decode(x)), dtype=np.float64))


def svdd_row(task, generators, plan: tuple[int, tuple[int, ...]], args, reward: str, budget: int, log: dict):
    """Row callable: seed -> ``design_batches`` SVDD design batches of ``design_size``; checks that each batch
    spent at most ``budget`` counted oracle calls and records the counts in ``log`` (seed -> calls per batch)."""
    import torch

    from sepo_ray.diffusion.guidance import svdd_sample
    from sepo_ray.evaluation import load_generator

    num, ks = plan

    def row(seed: int) -> list[str]:
        model = load_generator(task, generators[seed])
        value = CountingReward(task, reward)
        g = torch.Generator().manual_seed(20_000 * (seed + 1))
        out, counts = [], []
        for _ in range(args.design_batches):
            before = value.calls
            res = svdd_sample(
                model,
                value,
                args.design_size,
                task.length,
                args.steps,
                num,
                ks,
                args.svdd_temperature,
                generator=g,
            )
            spent = value.calls - before
            if spent != res.oracle_calls or spent > budget:
                raise RuntimeError(f"svdd spent {spent} calls (reported {res.oracle_calls}), budget {budget}")
            counts.append(spent)
            out += task.decode(res.x)
        log[seed] = counts
        return out

    return row


def _run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / method / f"seed{seed}"


def _calls_until(record: dict, iteration: int, batch: int) -> int:
    """Fine-tuning-oracle calls a run spent by ``iteration``: its iterations so far x sequences per iteration."""
    return sum(1 for h in record["history"] if h["iteration"] <= iteration) * batch
