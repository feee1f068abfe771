"""Row callables ``seed -> sequences`` (a generator's samples, best-of-N from cached candidate pools, SVDD guidance
with every oracle call counted) and the row cache (metrics + samples under a fingerprint of what made them).

For a task with prompts every row at a seed completes the same prompts (``Task.evaluation_prompts(seed, n)``):
a best-of-N design i is the best of N completions of prompt i, so rows pair sequence by sequence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def generator_hash(task, source) -> str:
    """Hash of the weights behind ``source`` ("pretrained" or a generator file)."""
    path = task.generator_file(None if source == "pretrained" else source)
    return file_hash(path) if path is not None else "built-in"


# ------------------------------------------------------------------------------------------------- the cache
def row_fingerprint(name: str, source: dict, settings: dict) -> dict:
    """What a row's numbers depend on: its source (a generator file's hash, a budget, a reference set) and the
    evaluation settings. A cached row is reused only when this matches exactly."""
    return {"row": name, **source, **settings}


def load_cached_row(cache: Path, name: str, fingerprint: dict):
    """(metrics, samples) of a row evaluated before with the same fingerprint, or None."""
    import pandas as pd

    meta, table = cache / f"{name}.json", cache / f"{name}.parquet"
    if not (meta.is_file() and table.is_file()):
        return None
    saved = json.loads(meta.read_text())
    if saved.get("fingerprint") != fingerprint:
        return None
    return saved["metrics"], pd.read_parquet(table)


def save_cached_row(cache: Path, name: str, fingerprint: dict, metrics: dict, samples) -> None:
    """Write a row's metrics and samples (parquet first, then the JSON that makes the pair valid)."""
    from sepo_ray.runtime import write_json

    cache.mkdir(parents=True, exist_ok=True)
    samples.to_parquet(cache / f"{name}.parquet", index=False)
    write_json(cache / f"{name}.json", {"fingerprint": fingerprint, "metrics": metrics})


def load_json_cache(path: Path, key: dict):
    """The value saved at ``path`` under exactly ``key``, or None."""
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved["value"] if saved.get("key") == key else None


def save_json_cache(path: Path, key: dict, value) -> None:
    from sepo_ray.runtime import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"key": key, "value": value})


# -------------------------------------------------------------------------------------------------- the rows
def sample_row(task, generators: Mapping[int, object], num: int, steps: int) -> Callable[[int], list[str]]:
    """Row callable: seed -> ``num`` samples of that seed's generator (sampling seed = seed)."""
    from sepo_ray.evaluation import load_generator

    def row(seed: int) -> list[str]:
        return task.sample(load_generator(task, generators[seed]), num, steps, seed=seed, batch_size=320)

    return row


def pool_chunk(
    task, model_fn, score, pool_dir: Path, seed: int, chunk: int, num: int, steps: int, prompt=None
):
    """Candidate ``chunk`` of ``seed``: ``num`` samples (sampling seed 10000 (seed + 1) + chunk; row i after
    prompt i when given) with their reward, cached as ``pool_dir/seed<s>_chunk<c>.parquet`` (sequence, score)."""
    import pandas as pd

    path = pool_dir / f"seed{seed}_chunk{chunk:04d}.parquet"
    if path.is_file():
        frame = pd.read_parquet(path)
        if len(frame) == num:
            return frame
    seqs = task.sample(
        model_fn(), num, steps, seed=10_000 * (seed + 1) + chunk, batch_size=320, prompt=prompt
    )
    frame = pd.DataFrame({"sequence": seqs, "score": np.asarray(score(seqs), dtype=np.float64)})
    pool_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return frame


def best_of_n_row(task, generators, n: int, num: int, steps: int, reward: str, pools: Path, timeout_s: float):
    """Row callable: seed -> for each of ``num`` designs, the best by ``reward`` of its N candidates (candidate c of
    design i is row i of chunk c; chunks are shared by every N of the same generator, so a larger N extends a
    smaller one). A design batch of D designs spends D * N calls."""
    from sepo_ray.evaluation import load_generator
    from sepo_ray.oracles.pool import resolve_reward

    score = resolve_reward(reward, timeout_s=timeout_s)

    def row(seed: int) -> list[str]:
        source = generators[seed]
        prompt = task.evaluation_prompts(seed, num)  # (num, P): the prompts every row completes at this seed
        key = f"{generator_hash(task, source)}_T{steps}_{text_hash(reward)}"
        if prompt is not None:
            key += f"_P{text_hash(str(prompt.tolist()))}"
        model = []

        def model_fn():
            if not model:
                model.append(load_generator(task, source))
            return model[0]

        chunks = [
            pool_chunk(task, model_fn, score, pools / key, seed, c, num, steps, prompt) for c in range(n)
        ]
        scores = np.stack([c["score"].to_numpy() for c in chunks], axis=1)  # (num, N)
        pick = scores.argmax(axis=1)  # (num,)
        return [chunks[c]["sequence"].iloc[i] for i, c in enumerate(pick)]

    return row


class CountingReward:
    """A reward on token tensors that counts every sequence it scores: x (N, L) long -> (N,) float64."""

    def __init__(self, task, reward: str, timeout_s: float):
        from sepo_ray.oracles.pool import resolve_reward

        self.task, self.reward, self.calls = task, resolve_reward(reward, timeout_s=timeout_s), 0

    def __call__(self, x):
        import torch

        self.calls += int(x.shape[0])
        return torch.as_tensor(np.asarray(self.reward(self.task.decode(x)), dtype=np.float64))


def svdd_row(task, generators, plan, design_size: int, design_batches: int, steps: int, temperature: float,
             reward: str, budget: int, log: dict, timeout_s: float):  # fmt: skip
    """Row callable: seed -> ``design_batches`` SVDD design batches of ``design_size``; checks that each batch
    spent at most ``budget`` counted oracle calls and records the counts in ``log`` (seed -> calls per batch)."""
    import torch

    from sepo_ray.diffusion.guidance import svdd_sample
    from sepo_ray.evaluation import load_generator

    num, ks = plan

    def row(seed: int) -> list[str]:
        model = load_generator(task, generators[seed])
        value = CountingReward(task, reward, timeout_s)
        g = torch.Generator().manual_seed(20_000 * (seed + 1))
        out, counts = [], []
        for _ in range(design_batches):
            before = value.calls
            res = svdd_sample(
                model, value, design_size, task.length, steps, num, ks, temperature, generator=g
            )
            spent = value.calls - before
            if spent != res.oracle_calls or spent > budget:
                raise RuntimeError(f"svdd spent {spent} calls (reported {res.oracle_calls}), budget {budget}")
            counts.append(spent)
            out += task.decode(res.x)
        log[seed] = counts
        return out

    return row
