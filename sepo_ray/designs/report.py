"""The files of a design order: ``designs.parquet``, the task's own, ``summary.json`` and ``summary.md`` (the
counts, the plots and the top designs), written into a new folder in one step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from sepo_ray.tasks import Task

    from .pipeline import Designs

TOP_ROWS = 10  # designs shown in summary.md


def _cell(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if not np.isfinite(value) else f"{value:.3f}"
    text = str(value)
    return (text[:37] + "...") if len(text) > 40 else text.replace("|", "\\|")


def markdown_table(table: pd.DataFrame, columns: list[str]) -> str:
    """A Markdown table of ``columns`` of ``table``: floats to 3 decimals, long texts cut to 40 characters."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in columns) + " |" for _, row in table.iterrows()]
    return "\n".join(lines)


def counts_lines(summary: dict) -> list[str]:
    """The order's counts as Markdown table rows (drawn, rejected per constraint, duplicates, oracle calls)."""
    c = summary["counts"]
    rows = [
        ("task", summary["task"]),
        ("model", summary["model"]),
        ("seed", summary["seed"]),
        ("sampler steps", summary["steps"]),
        ("training reward", summary["reward"]),
        ("selection", summary["select"]),
        ("ranked by", summary["rank_by"]),
        ("designs delivered", summary["designs"]),
        ("sequences drawn", c["drawn"]),
        ("met every constraint", c["met_every_constraint"]),
    ]
    rows += [(f"rejected by {name}", k) for name, k in c["failed_per_constraint"].items()]
    rows += [
        ("exact duplicates removed", c["duplicates_removed"]),
        ("reward-oracle calls", summary["reward_oracle_calls"]),
        ("sampling time", f"{c['sampling_s']} s in {c['batches']} batches"),
        ("wall time", f"{summary.get('wall_s', '?')} s ({summary['threads']} threads, {summary['device']})"),
    ]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def score_plot(designs: Designs, folder: Path) -> str | None:
    """``score_distribution.png``: violins of the task's plotted score per comparison row; None without one."""
    import pandas as pd

    from sepo_ray.evaluation import violin_plot

    info = designs.summary.get("comparison_score")
    if not info or not designs.row_scores:
        return None
    column = info["column"]
    frame = pd.concat(
        [pd.DataFrame({"row": name, column: values}) for name, values in designs.row_scores.items()],
        ignore_index=True,
    )
    violin_plot(frame, folder / "score_distribution.png", column, info["label"])
    return "score_distribution.png"


def write_report(task: Task, designs: Designs, folder: Path, files: list[str]) -> None:
    """Plots, ``summary.json`` and ``summary.md`` in ``folder``; ``files`` (the outputs so far) grows with them."""
    from sepo_ray.runtime import write_json

    summary, table = designs.summary, designs.table
    plots = []
    if (name := score_plot(designs, folder)) is not None:
        label = summary["comparison_score"]["label"]
        plots.append((f"{label}: the designs against the comparison rows", name))
    if designs.rows:
        plots += task.design_plots(designs.rows, folder)
    files += [name for _, name in plots] + ["summary.json", "summary.md"]
    summary["files"] = files
    summary["columns"] = designs.column_help
    write_json(folder / "summary.json", summary)

    lines = [f"# Designs: {summary['designs']} from {summary['model']} ({summary['task']})", ""]
    if summary.get("command"):
        lines += ["```bash", summary["command"], "```", ""]
    lines += counts_lines(summary) + [""]
    if summary.get("comparison"):
        score = summary["comparison_score"]
        lines += [f"## {score['label']}", "", "| row | sequences | mean | median |", "|---|---|---|---|"]
        lines += [
            f"| {name} | {v['sequences']} | {v['mean']:.3f} | {v['median']:.3f} |"
            for name, v in summary["comparison"].items()
        ]
        lines.append("")
    for caption, name in plots:
        lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    shown = [c for c in table.columns if c != "sequence" or "completion" not in table.columns]
    lines += [
        f"## The top {min(TOP_ROWS, len(table))} designs",
        "",
        markdown_table(table.head(TOP_ROWS), shown),
        "",
    ]
    lines += ["## Columns", ""] + [f"- `{k}`: {v}" for k, v in designs.column_help.items()]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")


def write_designs(task: Task, designs: Designs, out: Path, log: Callable[[str], None] = print) -> Path:
    """Writes ``designs.parquet``, the task's own files, the plots, ``summary.json`` and ``summary.md`` into the
    new folder ``out``: staged in a hidden sibling, then renamed in one step (nothing half-written is left; an
    ``out`` that appeared meanwhile is not touched)."""
    import shutil

    from .options import staging_folder

    stage = staging_folder(out)
    try:
        designs.table.to_parquet(stage / "designs.parquet", index=False)
        files = ["designs.parquet", *task.write_designs(designs.table, stage)]
        write_report(task, designs, stage, files)
        if out.exists():
            raise ValueError(f"--output {out} appeared while the designs were made; they were not written")
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log(f"wrote {out}: {', '.join(designs.summary['files'])}")
    return out
