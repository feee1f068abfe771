"""frontier.md and frontier.png from the content of frontier.json (pure but for the files written)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .plan import best_row


def _label(scorer, key: str) -> str:
    return scorer.metric_labels.get(key, key).replace(" ↑", "").replace(" ↓", "")


def format_frontier(report: Mapping, scorer) -> str:
    """frontier.md: what was run, the table (mean ± standard error over seeds), one sentence per budget."""
    keys = list(scorer.metric_labels)
    digits = getattr(scorer, "metric_digits", {}) or {}
    score, realism, floor = report["score_metric"], report["realism_metric"], report["realism_min"]
    one_seed = len(report["seeds"]) < 2  # no standard error from one seed: means only

    def cell(m, d):
        return f"{m['mean']:.{d}f}" if one_seed else f"{m['mean']:.{d}f} ± {m['se']:.{d}f}"

    spread = "one seed: means only, no standard errors" if one_seed else "mean ± standard error over seeds"
    lines = [
        f"Frontier of task {report['task']}: held-out metrics against the oracle calls spent per design batch of "
        f"{report['design_size']} sequences (fine-tuning plus selection). {report['design_batches']} design "
        f"batches per seed, seeds {report['seeds']}, T = {report['steps']}; {spread}.",
        "",
        "| method | calls | " + " | ".join(scorer.metric_labels[k] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for row in [*report["rows"], *report["references"]]:
        cells = []
        for k in keys:
            m, d = row["metrics"][k], digits.get(k, 3)
            cells.append(cell(m, d))
        calls = "" if row["budget_calls"] is None else str(row["budget_calls"])
        lines.append(f"| {row['method']} | {calls} | " + " | ".join(cells) + " |")
    lines.append("")
    guard = f" among rows with {_label(scorer, realism)} >= {floor:g}" if realism else ""
    for budget in report["budgets"]:
        rows = [r for r in report["rows"] if r["budget_calls"] == budget]
        best = best_row(rows, score, realism, floor)
        if best is None:
            lines.append(f"At {budget} calls no row keeps {_label(scorer, realism)} >= {floor:g}.")
        else:
            m = best["metrics"][score]
            lines.append(
                f"At {budget} calls the best row by {_label(scorer, score)}{guard} is {best['method']} "
                f"({cell(m, 3)})."
            )
    return "\n".join(lines) + "\n"


def plot_frontier(report: Mapping, scorer, path: Path) -> Path:
    """Score (and realism) against calls, log x, standard-error bars; the pretrained row as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    keys = [report["score_metric"]] + ([report["realism_metric"]] if report["realism_metric"] else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in report["rows"]))
    for ax, key in zip(axes[0], keys):
        for method in methods:
            rows = sorted(
                (r for r in report["rows"] if r["method"] == method), key=lambda r: r["budget_calls"]
            )
            if method == "pretrained" or not rows:
                for r in rows:
                    ax.axhline(
                        r["metrics"][key]["mean"], color="0.4", ls="--", lw=1, label="pretrained (0 calls)"
                    )
                continue
            x = [r["budget_calls"] for r in rows]
            y = [r["metrics"][key]["mean"] for r in rows]
            e = [r["metrics"][key]["se"] for r in rows]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=method)
        if key == report["realism_metric"]:
            ax.axhline(
                report["realism_min"], color="tab:red", ls=":", lw=1, label=f"guard {report['realism_min']:g}"
            )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel(f"oracle calls per design batch of {report['design_size']}")
        ax.set_ylabel(scorer.metric_labels.get(key, key))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
