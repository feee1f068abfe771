"""A design order end to end: the generator, the sampling loop, best-of-N, the evidence, the ranking, the files.

:func:`order_defaults` reads what a run of the model would use (reward, sampler steps, reward timeout);
:func:`make_designs` samples, constrains, selects, scores and ranks, returning a :class:`Designs`;
:func:`sepo_ray.designs.report.write_designs` writes it into a new folder.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .collect import Collection, Constraint, collect
from .options import ENGINE_COLUMNS, PROMPT_COLUMNS, DesignOptions
from .rank import best_of_n, dedupe, rank

if TYPE_CHECKING:
    import pandas as pd

    from sepo_ray.tasks import Task

REWARD_CHUNK = 1024  # sequences per reward call


@dataclass
class Designs:
    """The outcome of an order: the ranked table (one row a design, best first), the counts and settings of
    ``summary.json``, and the comparison rows of ``summary.md`` (name -> sequences, and their plotted score)."""

    table: pd.DataFrame
    summary: dict
    rows: dict[str, list[str]] = field(default_factory=dict)
    row_scores: dict[str, np.ndarray] = field(default_factory=dict)
    column_help: dict[str, str] = field(default_factory=dict)


def recorded_run(model: str) -> dict | None:
    """The record of the run behind ``model``: a run folder's ``result.json``, or an exported model folder's
    ``config.json`` when it records the run's ``settings``; None otherwise (``pretrained``, a file, another
    folder)."""
    import json

    from sepo_ray.rundir import read_record

    path = Path(model)
    if model == "pretrained" or not path.is_dir():
        return None
    record = read_record(path)
    if record is None and (path / "config.json").is_file():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            return None
        record = config if isinstance(config, dict) and isinstance(config.get("settings"), dict) else None
    return record


def order_defaults(task: Task, model: str = "pretrained") -> dict:
    """What a run of ``model`` would use: ``{"reward", "reward_source", "steps", "reward_timeout_s"}``. The
    recorded settings of a run folder or an exported model folder (its reward and sampler steps) win over the
    task's run defaults. ValueError for a model of another task."""
    from sepo_ray.resolve import resolve_settings
    from sepo_ray.rundir import recorded_settings

    values = resolve_settings(task).values
    out = {
        "reward": values["reward"],
        "reward_source": f"the {task.name} task's run default",
        "steps": int(values["denoise_steps"]),
        "reward_timeout_s": values.get("reward_timeout_s"),
    }
    record = recorded_run(model)
    if record is not None:
        recorded, _ = recorded_settings(record)
        ran = recorded.get("task")
        if ran and ran not in (task.name, task.spec):
            raise ValueError(f"--model {model} was trained on the task {ran!r}, not {task.name!r}")
        if recorded.get("reward"):
            out["reward"], out["reward_source"] = recorded["reward"], f"the run's reward ({model})"
        if recorded.get("denoise_steps"):
            out["steps"] = int(recorded["denoise_steps"])
    return out


def _chunked(fn: Callable[[list[str]], np.ndarray], sequences: list[str]) -> np.ndarray:
    parts = [fn(sequences[i : i + REWARD_CHUNK]) for i in range(0, len(sequences), REWARD_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _sampler(task: Task, model, prompts: torch.Tensor | None, steps: int, seed: int, batch_size: int):
    """``draw(groups) -> sequences``: one seeded generator for the whole loop, so the same order draws the same
    sequences; group g completes ``prompts[g]`` (a task with prompts)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))

    def draw(groups: list[int]) -> list[str]:
        prompt = prompts[torch.as_tensor(groups, dtype=torch.long)] if prompts is not None else None  # (B, P)
        return task.sample(model, len(groups), steps, generator=gen, batch_size=batch_size, prompt=prompt)

    return draw


def make_designs(
    task: Task,
    model: str,
    options: DesignOptions,
    reward: str,
    constraints: Sequence[Constraint] = (),
    prompts: torch.Tensor | None = None,
    reward_timeout_s: float | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> Designs:
    """Samples ``model`` ("pretrained", a run folder, an exported model folder or a generator file) until
    ``options.n`` distinct designs (per prompt row of ``prompts`` (K, P), for a task with prompts) meet every
    constraint, each the best of ``options.select`` such candidates under ``reward``; scores them with the task's
    evidence columns and ranks them. ValueError (one line) for a generator or reward that cannot be used;
    :class:`~sepo_ray.designs.collect.DesignError` when the order cannot be met within its bounds."""

    from sepo_ray.evaluation import load_generator
    from sepo_ray.oracles.pool import resolve_reward

    t0 = time.perf_counter()
    generator = load_generator(task, model, device=device)
    reward_fn = resolve_reward(reward, timeout_s=reward_timeout_s)
    groups = 1 if prompts is None else len(prompts)
    per_group = options.candidates_per_prompt()
    what = f"{options.n} designs" + (f" for each of {groups} prompts" if prompts is not None else "")
    pick = f", each the best of {options.select}" if options.select > 1 else ""
    log(f"designing {what}{pick} from {model} ({options.steps} sampler steps, seed {options.seed})")
    draw = _sampler(task, generator, prompts, options.steps, options.seed, options.batch_size)
    found = collect(
        draw,
        [per_group] * groups,
        constraints,
        max_draws=options.max_draws(groups),
        time_limit_s=options.time_limit_s,
        batch_size=options.batch_size,
        keep_raw=options.compare_samples if model == "pretrained" else 0,
        log=log,
    )
    table, calls = _select(task, found, options, reward_fn, prompts, log)
    log(f"scoring {len(table)} designs: {', '.join(task.design_column_help()) or 'the reward only'}")
    texts = list(table["prompt"]) if "prompt" in table else None
    for name, values in task.design_columns(list(table["sequence"]), options.seed, texts, device).items():
        values = np.asarray(values)
        if values.shape != (len(table),):
            raise ValueError(f"design column {name!r}: {values.shape} values for {len(table)} designs")
        table[name] = values
    table, removed = dedupe(table, ["prompt_index", "sequence"] if prompts is not None else "sequence")
    table = rank(table, options.rank_by, options.descending)
    column_help = {k: v for k, v in {**ENGINE_COLUMNS, **PROMPT_COLUMNS}.items() if k in table.columns}
    column_help.update(task.design_column_help())
    summary = {
        "task": task.spec or task.name,
        "model": str(model),
        "seed": options.seed,
        "n": options.n,
        "prompts": groups if prompts is not None else None,
        "designs": len(table),
        "select": f"best-of-{options.select}" if options.select > 1 else "plain sampling",
        "steps": options.steps,
        "reward": reward,
        "rank_by": f"{options.rank_by} ({'descending' if options.descending else 'ascending'})",
        "constraints": [name for name, _ in constraints],
        "counts": {**found.counts(), "duplicates_removed": found.duplicates + removed},
        "bounds": {"max_draws": options.max_draws(groups), "time_limit_s": options.time_limit_s},
        "reward_oracle_calls": calls,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    designs = Designs(table, summary, column_help=column_help)
    if options.compare_samples:
        own = draw if model == "pretrained" else None  # its further draws are the pretrained generator's
        _comparison_rows(task, designs, found, own, options, prompts, device, log)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    return designs


def _select(task, found: Collection, options, reward_fn, prompts, log) -> tuple[pd.DataFrame, int]:
    """The designs table (id, sequence, prompt columns, reward, candidates), in group and draw order, and the
    reward calls spent: every candidate scored once; best-of-N keeps the best of each pool of N."""
    import pandas as pd

    candidates = [seq for pool in found.accepted for seq in pool]  # group by group, in draw order
    log(f"reward: {len(candidates)} calls")
    rewards = _chunked(reward_fn, candidates)  # (M,)
    keep = best_of_n(rewards, options.select) if options.select > 1 else np.arange(len(candidates))
    per_group = options.candidates_per_prompt()
    group = keep // per_group  # candidates are stored group by group, per_group each
    sequences = [candidates[i] for i in keep]
    table = pd.DataFrame({"id": [f"d{i + 1:04d}" for i in range(len(keep))], "sequence": sequences})
    if prompts is not None:
        heads, tails = task.split_prompt(sequences, prompts[torch.as_tensor(group, dtype=torch.long)])
        table["prompt_index"], table["prompt"], table["completion"] = group, heads, tails
    table["reward"] = rewards[keep]
    table["candidates"] = options.select
    return table, len(candidates)


def _comparison_rows(task, designs: Designs, found: Collection, draw, options, prompts, device, log) -> None:
    """The rows ``summary.md`` compares the designs with: the pretrained generator's samples (unconstrained, the
    same seed; the order's own draws, before any constraint, when it samples the pretrained generator: ``draw``)
    and the task's rows of real data, ``compare_samples`` each, with the task's plotted score of every row."""
    import inspect

    from sepo_ray.evaluation import load_generator

    k = options.compare_samples
    rows: dict[str, list[str]] = {"designs": list(designs.table["sequence"])}
    heads: dict[str, torch.Tensor | None] = {"designs": None}
    if prompts is not None:
        heads["designs"] = prompts[torch.tensor(designs.table["prompt_index"].tolist(), dtype=torch.long)]
    raw = found.raw[:k]
    if len(raw) < k:  # the order's own draws continue (pretrained), or the pretrained generator is sampled
        log(f"comparison: sampling {k - len(raw)} sequences from the pretrained generator")
        groups = [i % (1 if prompts is None else len(prompts)) for i in range(len(raw), k)]
        if draw is None:
            model = load_generator(task, "pretrained", device)
            draw = _sampler(task, model, prompts, options.steps, options.seed, options.batch_size)
        raw = raw + list(zip(groups, draw(groups)))
    rows["pretrained"] = [s for _, s in raw]
    if prompts is not None:
        heads["pretrained"] = prompts[torch.as_tensor([g for g, _ in raw], dtype=torch.long)]
    for name, row in task.reference_rows().items():
        try:
            rows[name], heads[name] = list(row(options.seed, k)), None
        except ValueError as e:  # a reference set smaller than k
            log(f"comparison: row {name} skipped ({str(e).splitlines()[0]})")
    scorer = task.scorer(device=device)
    score = scorer.plot_score
    if score is None:
        designs.rows = rows
        return
    pass_prompts = bool(task.prompt_length) and "prompts" in inspect.signature(scorer.scores).parameters
    for name, seqs in rows.items():
        if name == "designs" and score in designs.table:
            designs.row_scores[name] = designs.table[score].to_numpy(dtype=np.float64)
            continue
        log(f"comparison: scoring {len(seqs)} sequences of {name}")
        extra = {"prompts": task.split_prompt(seqs, heads.get(name))[0]} if pass_prompts else {}
        designs.row_scores[name] = np.asarray(
            scorer.scores(seqs, seed=options.seed, **extra)[score], dtype=float
        )
    designs.rows = rows
    designs.summary["comparison"] = {
        name: {"sequences": len(v), "mean": float(np.mean(v)), "median": float(np.median(v))}
        for name, v in designs.row_scores.items()
    }
    designs.summary["comparison_score"] = {"column": score, "label": scorer.plot_label}
