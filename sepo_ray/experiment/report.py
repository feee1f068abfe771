"""An experiment's report files from the content of ``comparison.json`` (pure but for the files written):
``table.md`` (the protocol, the table with 95 % intervals over seeds, the best row per budget with its seed-paired
verdict, the winner at each number of designs), ``frontier.png`` (score
and realism against calls, several budgets) and ``reward_kl.png`` (held-out reward against the runs' final path
KL, under ``--alphas``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .plan import best_row


def _label(scorer, key: str) -> str:
    return scorer.metric_labels.get(key, key).replace(" ↑", "").replace(" ↓", "")


def _ci_bars(metrics: list) -> list[list[float]]:
    """Error bars [[below...], [above...]] of the 95 % intervals (0 where a metric has none, e.g. one seed)."""
    lo, hi = [], []
    for m in metrics:
        ci = m.get("ci95") or [m["mean"], m["mean"]]
        ok = ci[0] == ci[0]
        lo.append(m["mean"] - ci[0] if ok else 0.0)
        hi.append(ci[1] - m["mean"] if ok else 0.0)
    return [lo, hi]


def format_table(report: Mapping, scorer) -> str:
    """table.md: the protocol, the table (mean [95 % t-interval] over training seeds; a fine-tuned row's measured
    training minutes per seed), per budget the best row against the runner-up (seed-paired: "beats" or "tie"), and
    the winner at each number of designs K."""
    from sepo_ray.protocol import paired_verdict

    keys = list(scorer.metric_labels)
    digits = getattr(scorer, "metric_digits", {}) or {}
    score, realism, floor = report["score_metric"], report["realism_metric"], report["realism_min"]
    one_seed = len(report["seeds"]) < 2  # no interval from one seed: means only
    protocol = report.get("protocol") or {}

    def cell(m, d):
        ci = m.get("ci95")
        if one_seed or not ci or ci[0] != ci[0]:
            return f"{m['mean']:.{d}f}"
        return f"{m['mean']:.{d}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"

    spread = "one seed: means only" if one_seed else "mean [95 % t-interval] over seeds"
    if any("win_rate" in row["metrics"] for row in report["rows"]):
        keys.append("win_rate")
    labels = {**scorer.metric_labels, "win_rate": "win rate vs pretrained ↑"}
    lines = []
    if protocol.get("exploratory"):
        lines += [f"**Exploratory: {len(report['seeds'])} seeds, fewer than the {protocol['min_report_seeds']} a "
                  "reported comparison needs.**", ""]  # fmt: skip
    lines += [
        f"Task {report['task']}: evaluation metrics against the oracle calls spent per design batch of "
        f"{report['design_size']} sequences (fine-tuning plus selection). {report['design_batches']} design "
        f"batches per seed, seeds {report['seeds']} (training seeds of fine-tuned rows, sampling seeds of the "
        f"others), T = {report['steps']}; {spread}.",
    ]
    if protocol:
        charged = ", ".join(f"{k} {v}" for k, v in protocol["tuning_calls"].items() if v) or "none"
        lines.append(
            f"Selection (tuning, base runs) read only the validation signal: {protocol['selection_signal']}; "
            f"tuning seeds {protocol['tuning_seeds'] or 'none'}; tuning calls charged: {charged}."
        )
    lines += [
        "",
        "| row | calls | train min/seed | " + " | ".join(labels[k] for k in keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for row in [*report["rows"], *report["references"]]:
        cells = []
        for k in keys:
            m, d = row["metrics"].get(k), digits.get(k, 3)
            cells.append(cell(m, d) if m is not None and m["mean"] == m["mean"] else "—")
        calls = "" if row["budget_calls"] is None else str(row["budget_calls"])
        wall = list((row.get("train_seconds") or {}).values())  # measured per seed; fine-tuned rows only
        minutes = f"{sum(wall) / len(wall) / 60:.1f}" if wall else "—"
        lines.append(f"| {row['name']} | {calls} | {minutes} | " + " | ".join(cells) + " |")
    lines.append("")
    guard = f" among rows with {_label(scorer, realism)} >= {floor:g}" if realism else ""
    for budget in report["budgets"]:
        rows = [r for r in report["rows"] if r["budget_calls"] == budget]
        best = best_row(rows, score, realism, floor)
        if best is None:
            lines.append(f"At {budget} calls no row keeps {_label(scorer, realism)} >= {floor:g}.")
            continue
        m = best["metrics"][score]
        text = f"At {budget} calls the best mean {_label(scorer, score)}{guard} is {best['entry']} ({cell(m, 3)})"
        rest = best_row([r for r in rows if r is not best], score, realism, floor)
        values = (m.get("values"), (rest or {}).get("metrics", {}).get(score, {}).get("values"))
        if rest is not None and values[0] and values[1] and len(values[0]) == len(values[1]):
            v = paired_verdict(*values)
            word = "beats" if v["verdict"] == "beats" else "ties with"
            text += (f"; it {word} {rest['entry']} (seed-paired difference {v['difference']:+.3f}, 95 % interval "
                     f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}])")  # fmt: skip
        lines.append(text + ".")
    winners = report.get("winners_by_designs") or {}
    if winners:
        lines += ["", f"Who wins by the number of designs K (total calls = tuning + training + K x calls per "
                  f"design; rows within the calls of the costliest fine-tuning row compete, by {_label(scorer, score)}"
                  f"{guard}):", ""]  # fmt: skip
        for k, w in winners.items():
            if w["winner"] is None:
                lines.append(f"- K = {k}: no row qualifies.")
                continue
            text = f"- K = {k} (budget {w['budget_calls']} calls): {w['winner']}"
            if w["runner_up"] is None:
                text += " (the only row within budget)"
            elif w["verdict"] == "beats":
                text += f" beats {w['runner_up']} ({w['difference']:+.3f}, [{w['ci95'][0]:+.3f}, {w['ci95'][1]:+.3f}])"
            elif w["verdict"] == "tie":
                text += (f" ties with {w['runner_up']} ({w['difference']:+.3f}, interval "
                         f"[{w['ci95'][0]:+.3f}, {w['ci95'][1]:+.3f}] covers 0)")  # fmt: skip
            else:
                text += f" leads {w['runner_up']} (unpaired: no verdict)"
            lines.append(text + ".")
    return "\n".join(lines) + "\n"


def plot_frontier(report: Mapping, scorer, path: Path) -> Path:
    """Score (and realism) against calls, log x, 95 % interval bars; the pretrained row as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    keys = [report["score_metric"]] + ([report["realism_metric"]] if report["realism_metric"] else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    entries = list(dict.fromkeys(r["entry"] for r in report["rows"]))
    for ax, key in zip(axes[0], keys):
        for method in entries:
            rows = sorted(
                (r for r in report["rows"] if r["entry"] == method), key=lambda r: r["budget_calls"]
            )
            if method == "pretrained" or not rows:
                for r in rows:
                    ax.axhline(
                        r["metrics"][key]["mean"], color="0.4", ls="--", lw=1, label="pretrained (0 calls)"
                    )
                continue
            x = [r["budget_calls"] for r in rows]
            y = [r["metrics"][key]["mean"] for r in rows]
            e = _ci_bars([r["metrics"][key] for r in rows])
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


def plot_reward_kl(report: Mapping, scorer, path: Path) -> Path:
    """The reward-vs-KL frontier (as the DPO paper's IMDb figure): each fine-tuned row's held-out metric (mean over
    seeds, bar: 95 % interval) against its runs' final path KL; rows of one method at several KL weights joined
    in order of KL; the pretrained row at KL 0. One panel for the scorer's first metric and one for its
    ``score_metric`` when that is another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in dict.fromkeys([next(iter(scorer.metric_labels)), report["score_metric"]]) if k]
    rows = [r for r in report["rows"] if r.get("kl") is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(r["method"], []).append(r)
    for ax, key in zip(axes[0], keys):
        for family, members in families.items():
            members = sorted(members, key=lambda r: r["kl"])
            xs, ys = [r["kl"] for r in members], [r["metrics"][key]["mean"] for r in members]
            ax.errorbar(
                xs,
                ys,
                yerr=_ci_bars([r["metrics"][key] for r in members]),
                marker="o",
                capsize=3,
                label=family,
            )
            for r, x, y in zip(members, xs, ys):
                if "kl_alpha" in r.get("config", {}):
                    ax.annotate(f"α {r['config']['kl_alpha']:g}", (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")  # fmt: skip
        for r in report["rows"]:
            if r["method"] == "pretrained":
                ax.plot([0.0], [r["metrics"][key]["mean"]], "k*", markersize=11, label="pretrained")
        ax.set_xlabel("path KL to the pretrained model (nats / sequence)")
        ax.set_ylabel(scorer.metric_labels.get(key, key))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
