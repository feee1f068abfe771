"""The evaluation table (paper Table 2 / Fig. 2 layout) for any task: rows over seeds, a violin plot, samples.

A *row* is a generator (sampled ``num_samples`` per seed with ``steps`` steps), a list of sequences (the same
for every seed), a ``{seed: sequences}`` mapping or a callable ``seed -> sequences``. The task's scorer
(:meth:`sepo_ray.tasks.Task.scorer`) gives the per-sequence scores and the set-level metrics with their
labels; :func:`evaluate_rows` returns the metrics as mean and sample standard deviation over seeds, and every
sequence with its scores. ``evaluate`` and ``compare`` are command lines over these functions.

For a task with prompts every generator row at a seed completes the same prompts
(:meth:`~sepo_ray.tasks.Task.evaluation_prompts`), each sequence is split into its prompt and completion
(:meth:`~sepo_ray.tasks.Task.split_prompt`), and a paired score compares two rows sequence by sequence only where
they complete the same prompts (:func:`win_rates`).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from sepo_ray.stats import mean_std

if TYPE_CHECKING:
    import pandas as pd

    from sepo_ray.tasks import Scorer, Task

DEFAULT_STEPS = 32

RowSpec = nn.Module | Sequence[str] | Mapping[int, Sequence[str]] | Callable[[int], Sequence[str]]


def nonfinite_weights(model: nn.Module) -> tuple[str, int] | None:
    """The first parameter or buffer holding NaN/inf, with its count of such entries; None when all finite."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return name, bad
    return None


def load_generator(task: Task, path_or_name: str | Path = "pretrained", device="cpu") -> nn.Module:
    """The generator behind an evaluation row: ``"pretrained"`` (the task's own), a run folder (its final
    checkpoint's generator), an exported model folder or a weights file.

    Raises ValueError naming the file and the first non-finite parameter when any weight is NaN/inf: such a
    generator samples garbage (or crashes the sampler), and its numbers would be meaningless.
    """
    from sepo_ray.rundir import generator_source

    source = generator_source(path_or_name)
    source = None if source == "pretrained" else source
    model = task.build_denoiser(source, device=device)
    bad = nonfinite_weights(model)
    if bad is not None:
        path = task.generator_file(source) or "pretrained"
        raise ValueError(
            f"generator {path} has non-finite weights ({bad[0]}: {bad[1]} NaN/inf); it was not evaluated"
        )
    return model


def probe_references(
    references: Mapping[str, Callable[[int, int], Sequence[str]]], seed: int, num_samples: int
) -> dict[str, list[str]]:
    """Draws each reference row once (``draw(seed, num_samples)``), before any sampling, so that a set too
    small for ``num_samples`` fails at once; returns the draws (reuse them for ``seed``). ValueError names
    the row."""
    drawn = {}
    for name, draw in references.items():
        try:
            drawn[name] = list(draw(seed, num_samples))
        except ValueError as e:
            msg = re.sub(r"^num_samples: ", "", str(e).strip().splitlines()[0] if str(e).strip() else "")
            msg = re.sub(r", asked for \d+$", "", msg)  # the caller says how many were asked for
            raise ValueError(msg if name in msg else f"{name}: {msg}") from None
    return drawn


def reference_row(
    draw: Callable[[int, int], Sequence[str]], num_samples: int, probed: tuple[int, list[str]] | None = None
) -> Callable[[int], list[str]]:
    """Row callable ``seed -> draw(seed, num_samples)``; ``probed`` = (seed, its draw) is reused, not redrawn."""

    def row(seed: int) -> list[str]:
        if probed is not None and seed == probed[0]:
            return list(probed[1])
        return list(draw(seed, num_samples))

    return row


def _row_sequences(
    task: Task,
    spec: RowSpec,
    seed: int,
    num_samples: int,
    steps: int,
    batch_size: int,
    progress,
    prompt: torch.Tensor | None = None,
) -> list[str]:
    if isinstance(spec, nn.Module):
        return task.sample(
            spec, num_samples, steps, seed=seed, batch_size=batch_size, progress=progress, prompt=prompt
        )
    if isinstance(spec, Mapping):
        return list(spec[seed])
    if callable(spec):
        return list(spec(seed))
    return list(spec)


def evaluate_rows(
    task: Task,
    rows: Mapping[str, RowSpec],
    seeds: Sequence[int] = (0, 1, 2),
    num_samples: int = 640,
    steps: int = DEFAULT_STEPS,
    scorer: Scorer | None = None,
    progress: bool = True,
    batch_size: int = 320,
    prompts: torch.Tensor | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Metrics of every row over seeds, and all sequences with their scores.

    ``prompts`` (K, P): the pool a task with prompts draws each seed's prompts from (default its held-out prompts).
    Returns (metrics {row: {metric: {"mean", "std", "values" (per seed)}}} in the scorer's metric order, DataFrame with columns row,
    seed, for a task with prompts prompt and completion, sequence (the whole text) and the scorer's per-sequence
    scores).
    """
    import pandas as pd

    from sepo_ray.progress import progress as progress_bar

    if not rows:
        raise ValueError("rows must name at least one row")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    scorer = scorer or task.scorer()
    prompted = bool(task.prompt_length)
    pass_prompts = prompted and "prompts" in inspect.signature(scorer.scores).parameters
    calls_per_sample = -(-num_samples // batch_size)  # sampler batches per row and seed
    outer = progress_bar(len(rows) * len(seeds), "evaluate", unit="set", disable=not progress, leave=True)
    per_row: dict[str, list[dict]] = {}
    frames = []
    for name, spec in rows.items():
        per_row[name] = []
        for seed in seeds:
            outer.set_postfix_str(f"{name} seed {seed}")
            inner = progress_bar(
                steps * calls_per_sample,
                f"sampling {name} seed {seed}",
                disable=not progress or not isinstance(spec, nn.Module),
                position=1,
            )

            def tick(done: int, total: int, inner=inner) -> None:
                inner.update(done - inner.n)

            cond = task.evaluation_prompts(seed, num_samples, prompts) if prompted else None  # (N, P)
            seqs = _row_sequences(task, spec, seed, num_samples, steps, batch_size, tick, cond)
            inner.close()
            texts = {}
            if prompted:
                given = cond if cond is not None and len(cond) == len(seqs) else None
                texts["prompt"], texts["completion"] = task.split_prompt(seqs, given)
            extra = {"prompts": texts["prompt"]} if pass_prompts else {}
            scores = scorer.scores(seqs, seed=seed, **extra)
            per_row[name].append(scorer.summarize(scores, seqs))
            frames.append(pd.DataFrame({"row": name, "seed": seed, **texts, "sequence": seqs, **scores}))
            outer.update(1)
    outer.close()
    metrics = {
        name: {
            key: {**mean_std([m[key] for m in runs]), "values": [float(m[key]) for m in runs]}
            for key in scorer.metric_labels
        }
        for name, runs in per_row.items()
    }
    samples = pd.concat(frames, ignore_index=True)
    if getattr(scorer, "paired_score", None) and "pretrained" in rows:
        for name in rows:
            wins = win_rates(samples, name, "pretrained", scorer.paired_score)
            if wins:  # a row that does not pair with the pretrained one has no win rate
                metrics[name]["win_rate"] = {**mean_std(wins), "values": wins}
    return metrics, samples


def win_rates(samples: pd.DataFrame, row: str, baseline: str, score: str) -> list[float]:
    """Per seed, the paired win rate of ``row`` over ``baseline`` under ``score``: sequence i of a seed against
    sequence i of the baseline at that seed, ties counting half.

    The pairs must be pairs: with a ``prompt`` column, sequence i of both rows must complete the same prompt,
    and rows of different lengths pair over the shorter one's sequences (best-of-N at a reward budget completes
    the first C / N of a seed's prompts, the prompts every row starts with); without one the counts must be
    equal. A row that does not pair with the baseline at every seed (other prompts, another count of sequences
    without prompts, a seed the baseline lacks) has no paired win rate: [] is returned rather than an unpaired
    comparison.
    """
    out = []
    base_rows = samples[samples["row"] == baseline]
    prompted = "prompt" in samples
    for seed, group in samples[samples["row"] == row].groupby("seed", sort=True):
        base = base_rows[base_rows["seed"] == seed]
        if (len(group) != len(base) and not prompted) or not len(group) or not len(base):
            return []
        n = min(len(group), len(base))
        group, base = group.iloc[:n], base.iloc[:n]
        if prompted and not np.array_equal(group["prompt"].to_numpy(), base["prompt"].to_numpy()):
            return []
        a, b = group[score].to_numpy(), base[score].to_numpy()
        out.append(float(np.mean((a > b) + 0.5 * (a == b))))
    return out


def format_table(
    metrics: Mapping[str, Mapping[str, Mapping[str, float]]],
    labels: Mapping[str, str],
    digits: Mapping[str, int] | None = None,
) -> str:
    """Markdown table, one line per row, "mean (std)" per metric (paper Table 2 layout); ``digits`` per metric
    (default 3)."""
    keys = list(labels) + (["win_rate"] if any("win_rate" in row for row in metrics.values()) else [])
    labels = {**labels, "win_rate": "win rate vs pretrained ↑"}
    lines = ["| row | " + " | ".join(labels[k] for k in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name, row in metrics.items():
        cells = []
        for key in keys:
            d = (digits or {}).get(key, 3)
            value = row.get(key, {"mean": math.nan, "std": math.nan})
            if not math.isfinite(value["mean"]):  # not measured for this row (e.g. an unpaired win rate)
                cells.append("—")
            else:
                cells.append(f"{value['mean']:.{d}f} ({value['std']:.{d}f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def violin_plot(samples: pd.DataFrame, path: str | Path, column: str, label: str | None = None) -> Path:
    """Violin plot of a per-sequence score by row (paper Fig. 2), all seeds pooled; PNG via matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(samples["row"]))
    data = [samples.loc[samples["row"] == n, column].to_numpy() for n in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4.5))
    ax.violinplot(data, showmedians=True, showextrema=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
    ax.set_ylabel(label or column)
    ax.axhline(0.0, color="0.7", lw=0.8, ls="--")
    ax.set_title(f"{label or column} per sequence")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(
    output: str | Path, metrics: dict, samples: pd.DataFrame, scorer: Scorer, run_info: dict | None = None
) -> Path:
    """metrics.json, table.md, <plot_score>.png, samples.parquet (and run.json) in ``output``."""
    from sepo_ray.runtime import write_json

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", metrics)
    (out / "table.md").write_text(format_table(metrics, scorer.metric_labels, scorer.metric_digits))
    if scorer.plot_score is not None and scorer.plot_score in samples:
        violin_plot(samples, out / f"{scorer.plot_score}.png", scorer.plot_score, scorer.plot_label)
    samples.to_parquet(out / "samples.parquet", index=False)
    if run_info is not None:
        write_json(out / "run.json", run_info)
    return out
