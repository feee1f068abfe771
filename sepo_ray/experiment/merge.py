"""One report from an experiment run in parts: ``sepo-ray frontier TASK --merge DIR,DIR --output DIR``.

A frontier too long for one machine runs as parts with the same protocol: other methods (``--methods``) or other
training seeds (``--seeds``) of the same rows, each part in its own folder, on as many machines as there are parts.
Merging unions their rows into the report one command would have written: a row present in several parts is joined
seed by seed from its per-seed values (the parts' seeds must not overlap), and winners are recomputed on the joined
rows. Everything the numbers depend on must agree between the parts (the task, the design batches, T, the reward,
the metrics, the tuning of each method and its charge), and every joined row must end with the same seeds, so
that seed-paired comparisons pair; anything else is refused with the first difference named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from sepo_ray.protocol import seed_summary, winners_by_designs

# what every part must share: report fields, protocol fields, and a row's fields across parts
SAME = (
    "task",
    "design_size",
    "design_batches",
    "steps",
    "reward",
    "score_metric",
    "realism_metric",
    "realism_min",
)
SAME_PROTOCOL = (
    "selection_signal", "evaluation_signals", "tuning_seeds", "designs", "min_report_seeds", "interval",
    "torch_threads", "tuned_horizon_calls",
)  # fmt: skip
SAME_ROW = (
    "entry", "method", "budget_calls", "iterations", "config", "cost", "tuning_calls", "sequences_per_seed",
)  # fmt: skip


def read_part(folder: Path) -> dict:
    """A part's ``comparison.json``; ValueError when the folder has none (its experiment has not finished)."""
    path = Path(folder) / "comparison.json"
    if not path.is_file():
        raise ValueError(f"--merge: {folder} has no comparison.json (finish that experiment first)")
    return json.loads(path.read_text())


def _union(a: Mapping, b: Mapping, what: str) -> dict:
    """Two mappings joined; ValueError where they hold the same key with different values."""
    for k in a.keys() & b.keys():
        if a[k] != b[k]:
            raise ValueError(f"--merge: the parts disagree on {what} {k!r}: {a[k]!r} vs {b[k]!r}")
    return {**a, **b}


def join_rows(a: Mapping, b: Mapping) -> dict:
    """Row ``a`` and row ``b`` (the same row, other seeds) as one row over both parts' seeds: every metric from
    its per-seed values, the KL as the mean over all seeds, training seconds and counted calls per seed."""
    name = a["name"]
    for key in SAME_ROW:
        if a.get(key) != b.get(key):
            raise ValueError(
                f"--merge: row {name} differs between the parts in {key}: {a.get(key)!r} vs {b.get(key)!r}"
            )
    shared = sorted(set(a["seeds"]) & set(b["seeds"]))
    if shared:
        raise ValueError(
            f"--merge: row {name} has seeds {shared} in two parts; each seed must come from one part"
        )
    if a["metrics"].keys() != b["metrics"].keys():
        raise ValueError(
            f"--merge: row {name} has other metrics in the parts: {sorted(a['metrics'])} vs {sorted(b['metrics'])}"
        )
    seeds = sorted([*a["seeds"], *b["seeds"]])
    metrics = {}
    for key in a["metrics"]:
        by_seed = {}
        for row in (a, b):
            values = row["metrics"][key].get("values")
            if values is None or len(values) != len(row["seeds"]):
                raise ValueError(f"--merge: row {name} has no per-seed values of {key}; it cannot be joined")
            by_seed.update(zip(row["seeds"], values))
        metrics[key] = seed_summary([by_seed[s] for s in seeds])
    out = {**a, "seeds": seeds, "metrics": metrics}
    if ("kl" in a) != ("kl" in b):
        raise ValueError(f"--merge: row {name} has a KL in one part only")
    if "kl" in a:  # each part's KL is the mean over its seeds
        out["kl"] = (a["kl"] * len(a["seeds"]) + b["kl"] * len(b["seeds"])) / len(seeds)
    for key in ("train_seconds", "counted_calls"):
        if key in a or key in b:
            out[key] = {**a.get(key, {}), **b.get(key, {})}
    if "counted_calls" in out:  # SVDD: the most any seed's design batch spent
        out["calls"] = {**a["calls"], "selection": max(a["calls"]["selection"], b["calls"]["selection"])}
    elif a.get("calls") != b.get("calls"):
        raise ValueError(
            f"--merge: row {name} differs between the parts in calls: {a.get('calls')!r} vs {b.get('calls')!r}"
        )
    return out


ORDER = {
    "sampler": 0,
    "finetune": 1,
    "selection": 2,
    "finetune+selection": 3,
}  # within a budget, as the engine


def _order(row: Mapping) -> tuple[int, int]:
    from sepo_ray.methods import METHODS

    method = METHODS.get(row["method"])
    return row.get("budget_calls") or 0, ORDER.get(method.kind, 0) if method is not None else 0


def _join_all(parts: Sequence[Mapping], field: str) -> list[dict]:
    """The parts' rows (or references) by name, joined where several parts hold one; in the engine's order (by
    budget; within one, fine-tuned rows, selection, then fine-tuning plus selection), else as they first appear."""
    joined: dict[str, dict] = {}
    for part in parts:
        for row in part[field]:
            joined[row["name"]] = join_rows(joined[row["name"]], row) if row["name"] in joined else dict(row)
    return sorted(joined.values(), key=_order)


def merge_reports(parts: Sequence[Mapping], higher_is_better: bool = True) -> dict:
    """The report of ``parts`` (each a ``comparison.json``) as one experiment; ValueError on any disagreement."""
    if len(parts) < 2:
        raise ValueError("--merge needs at least two experiment folders")
    first = parts[0]
    for part in parts[1:]:
        for key in SAME:
            if part.get(key) != first.get(key):
                raise ValueError(
                    f"--merge: the parts differ in {key}: {first.get(key)!r} vs {part.get(key)!r}"
                )
        for key in SAME_PROTOCOL:
            if part["protocol"].get(key) != first["protocol"].get(key):
                raise ValueError(
                    f"--merge: the parts differ in protocol {key}: {first['protocol'].get(key)!r} vs "
                    f"{part['protocol'].get(key)!r}"
                )
    tuning, charged = {}, {}
    for part in parts:
        tuning = _union(tuning, part.get("tuning", {}), "the tuning of")
        charged = _union(charged, part["protocol"].get("tuning_calls", {}), "the tuning calls of")
    rows, references = _join_all(parts, "rows"), _join_all(parts, "references")
    seeds = sorted({s for r in rows for s in r["seeds"]})
    for row in [*rows, *references]:
        if row["seeds"] != seeds:
            raise ValueError(
                f"--merge: row {row['name']} has seeds {row['seeds']}, the others reach {seeds}: merge the parts that "
                "hold its other seeds too (seed-paired comparisons need the same seeds in every row)"
            )
    protocol = {
        **first["protocol"],
        "report_seeds": seeds,
        "tuning_calls": charged,
        "exploratory": len(seeds) < first["protocol"]["min_report_seeds"],
    }
    return {
        **{k: first[k] for k in first if k not in ("rows", "references", "winners_by_designs")},
        "protocol": protocol,
        "budgets": sorted({b for part in parts for b in part["budgets"]}),
        "seeds": seeds,
        "tuning": tuning,
        "rows": rows,
        "references": references,
        "winners_by_designs": winners_by_designs(
            rows,
            protocol["designs"],
            first["score_metric"],
            first["realism_metric"],
            first["realism_min"],
            higher_is_better=higher_is_better,
        ),  # fmt: skip
    }


def merge_experiments(task, folders: Sequence[Path], output: Path) -> dict:
    """Read the parts in ``folders``, merge them, write the report into ``output`` (comparison.json with
    ``merged_from``, table.md, metrics.json, samples.parquet when every part has one, the plots); returns it.
    ``output`` must be a new folder or an earlier merge's (whose report files this one replaces, leaving none
    of the earlier merge's behind): never a part, never an experiment's own folder."""
    import pandas as pd

    from .pipeline import report_files, write_report

    output = Path(output)
    folders = [Path(f) for f in folders]
    if any(output.resolve() == f.resolve() for f in folders):
        raise ValueError(
            f"--merge: --output {output} is one of the parts; write the merge into another folder"
        )
    own = output / "comparison.json"
    work = [n for n in ("runs", "rows", "pools", "tuning", "tuning.json") if (output / n).exists()]
    if work or (own.is_file() and "merged_from" not in json.loads(own.read_text())):
        raise ValueError(
            f"--output {output} holds an experiment of its own; write the merge into another folder"
        )
    parts = [read_part(f) for f in folders]
    if parts and parts[0].get("task") != task.name:
        raise ValueError(
            f"--merge: the parts are experiments on task {parts[0].get('task')!r}, not {task.name!r}"
        )
    scorer = task.scorer()
    report = merge_reports(
        parts, higher_is_better=parts[0]["score_metric"] not in getattr(scorer, "lower_is_better", ())
    )
    report["merged_from"] = [
        {"folder": str(f), "rows": [r["name"] for r in p["rows"]], "seeds": p["seeds"]}
        for f, p in zip(folders, parts)
    ]
    tables = [f / "samples.parquet" for f in folders]
    frames = [pd.read_parquet(t) for t in tables] if all(t.is_file() for t in tables) else []
    output.mkdir(parents=True, exist_ok=True)
    written = write_report(output, scorer, report, frames)
    for stale in set(report_files(output, scorer)) - set(written):  # an earlier merge's, not this one's
        stale.unlink(missing_ok=True)
    return report
