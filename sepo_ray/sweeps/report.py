"""Results of a sweep, pure: one row per trial, the best config, the content of ``sweep.json`` and its text."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sepo_ray.runtime import jsonable

from .spec import SchedulerSpec, SweepSpec

#: the oracle calls a trial spent on its validation signal (charged to the tuning like its training calls)
VALIDATION_CALLS = "sepo/validation_calls"
#: the oracle calls a trial spent training (one per sampled sequence), whatever the scheduler's clock
SAMPLED_CALLS = "num_env_steps_sampled_lifetime"


def asha_rungs(scheduler: SchedulerSpec) -> list[float]:
    """The rung milestones of ASHA (all brackets): grace_period * rf^(k+s) below max_t, as Ray builds them."""
    rungs = set()
    rf, grace = scheduler.reduction_factor, scheduler.grace_period
    for s in range(scheduler.brackets):
        num_rungs = int(math.log(scheduler.max_t / grace) / math.log(rf) - s + 1)
        rungs |= {grace * rf ** (k + s) for k in range(num_rungs)}
    return sorted(r for r in rungs if r < scheduler.max_t)


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _reached(value: Any, threshold: float) -> bool:
    value = _finite(value)
    return value is not None and value >= threshold


def summarize_trial(record: Mapping, spec: SweepSpec) -> dict:
    """One sweep.json row from a trial record.

    ``record``: {"trial_id", "status", "config" (searched values), "history" (list of flat result dicts,
    "/"-joined keys, one per reported iteration), "error" (str or None), and for a trial an interrupt cut
    (status ``"interrupted"``) "resume_hint"}. A metric that some iterations
    do not report (the validation signal) is summarised over the iterations that do; ``stopped_early`` marks a
    TERMINATED trial that ASHA ended at a rung, before ``max_t`` and any ``stop`` threshold.
    """
    history = list(record.get("history") or [])
    last = history[-1] if history else {}

    def summary(key: str, mode: str) -> dict:
        values = [v for v in (_finite(h.get(key)) for h in history) if v is not None]
        best = (max if mode == "max" else min)(values) if values else None
        return {"last": values[-1] if values else None, "best": best, "num_reports": len(values)}

    metrics = {spec.metric: summary(spec.metric, spec.mode)}
    metrics[spec.select_metric] = summary(spec.select_metric, spec.select_mode)
    for key in spec.select_min:
        metrics.setdefault(key, summary(key, "max"))
    for key in ("training_iteration", spec.scheduler.time_attr, SAMPLED_CALLS, VALIDATION_CALLS, *spec.stop):
        if key not in metrics:
            metrics[key] = _finite(last.get(key))

    status = str(record.get("status") or "UNKNOWN")
    clock = _finite(last.get(spec.scheduler.time_attr))
    before = _finite(history[-2].get(spec.scheduler.time_attr)) if len(history) > 1 else 0.0
    reached_max_t = clock is not None and clock >= spec.scheduler.max_t
    reached_stop = any(_reached(last.get(k), v) for k, v in spec.stop.items())
    # ASHA decides only on the first result at or past a rung: a trial whose last result crossed one
    # without reaching max_t or a stop threshold was stopped by the scheduler.
    crossed_rung = clock is not None and any((before or 0.0) < r <= clock for r in asha_rungs(spec.scheduler))
    # the realism guards, on each metric's last reported value (None: some guard metric was never reported)
    lasts = [metrics[k]["last"] for k in spec.select_min]
    meets = None if None in lasts else all(v >= spec.select_min[k] for k, v in zip(spec.select_min, lasts))
    return {
        "trial_id": str(record.get("trial_id")),
        "status": status,
        "stopped_early": status == "TERMINATED" and crossed_rung and not (reached_max_t or reached_stop),
        "meets_select_min": meets if spec.select_min else True,
        "config": jsonable(dict(record.get("config") or {})),
        "metrics": jsonable(metrics),
        "error": record.get("error"),
        "resume_hint": record.get("resume_hint"),
    }


def select_best(rows: Sequence[Mapping], spec: SweepSpec) -> dict | None:
    """The best trial by the last reported ``select_metric`` (the task's validation score).

    Only trials that meet every ``select_min`` guard (on its last reported value) are candidates. Among them,
    first non-empty set wins: trials that ran to the end (not stopped early, not errored) and reported the
    metric; any trial that reported it; then, as a fallback, trials ranked by the scheduler's ``metric``
    (last value). Returns None when no candidate reported either.
    """
    rows = [r for r in rows if r.get("meets_select_min", True)]
    for key, mode in ((spec.select_metric, spec.select_mode), (spec.metric, spec.mode)):
        scored = [r for r in rows if (r["metrics"].get(key) or {}).get("last") is not None]
        finished = [r for r in scored if r["status"] == "TERMINATED" and not r["stopped_early"]]
        pool = finished or scored
        if pool:
            sign = 1.0 if mode == "max" else -1.0
            best = max(pool, key=lambda r: sign * r["metrics"][key]["last"])
            return {
                "trial_id": best["trial_id"],
                "selected_by": key,
                "value": best["metrics"][key]["last"],
                "config": dict(best["config"]),
                "sepo_config": {**spec.base_config, **best["config"]},
            }
    return None


def sweep_report(
    spec: SweepSpec, records: Sequence[Mapping], experiment_path: str = "", resume_command: str | None = None
) -> dict:
    """The content of sweep.json: the sweep's settings, one row per trial, the best config.

    ``resume_command``: set when the sweep was interrupted (Ctrl-C); the report then counts the trials cut
    (status ``"interrupted"``) and those not created yet (``num_trials`` of the file minus the rows).
    """
    rows = [summarize_trial(r, spec) for r in records]
    rows.sort(key=lambda r: r["trial_id"])
    best = select_best(rows, spec)
    s = spec.scheduler
    return jsonable(
        {
            "name": spec.name,
            "experiment_path": str(experiment_path),
            "metric": spec.metric,
            "mode": spec.mode,
            "select_metric": spec.select_metric,
            "select_mode": spec.select_mode,
            "select_min": spec.select_min,
            "scheduler": {
                "type": s.type,
                "time_attr": s.time_attr,
                "max_t": s.max_t,
                "grace_period": s.grace_period,
                "reduction_factor": s.reduction_factor,
                "brackets": s.brackets,
            },
            "searched_fields": spec.searched_fields,
            "base_config": spec.base_config,
            "num_trials": len(rows),
            "num_terminated": sum(r["status"] == "TERMINATED" for r in rows),
            "num_errored": sum(r["status"] == "ERROR" for r in rows),
            "num_stopped_early": sum(bool(r["stopped_early"]) for r in rows),
            "num_below_select_min": sum(r["meets_select_min"] is False for r in rows),
            "num_unchecked_select_min": sum(r["meets_select_min"] is None for r in rows),
            "interrupted": resume_command is not None,
            "num_interrupted": sum(r["status"] == "interrupted" for r in rows),
            "num_not_started": max(0, spec.num_trials - len(rows)) if resume_command is not None else 0,
            "resume_command": resume_command,
            "best": best,
            "trials": rows,
        }
    )


def format_report(report: Mapping) -> str:
    """A short text table of the trials and the best config."""
    metric, select = report["metric"], report["select_metric"]
    lines = [
        f"{report['num_trials']} trials: {report['num_terminated']} terminated "
        f"({report['num_stopped_early']} stopped early by the scheduler), {report['num_errored']} errored"
        + (f", {report['num_interrupted']} interrupted" if report.get("num_interrupted") else "")
    ]
    guards = report.get("select_min") or {}
    for row in report["trials"]:
        m = row["metrics"]
        reward = (m.get(metric) or {}).get("last")
        heldout = (m.get(select) or {}).get("last")
        extra = "".join(f" {k}={_fmt((m.get(k) or {}).get('last'))}" for k in guards)
        meets = row.get("meets_select_min", True)
        flag = {True: "", False: "  [below select_min]", None: "  [select_min metric not reported]"}[meets]
        lines.append(
            f"  {row['trial_id']:<12} {row['status']:<10} {'early' if row['stopped_early'] else '     '} "
            f"{metric}={_fmt(reward)} {select}={_fmt(heldout)}{extra} {_fmt_config(row['config'])}{flag}"
        )
    best = report.get("best")
    if (
        best is None
        and guards
        and (report.get("num_below_select_min") or report.get("num_unchecked_select_min"))
    ):
        bounds = ", ".join(f"{k} >= {v:g}" for k, v in guards.items())
        lines.append(
            f"No trial met select_min ({bounds}) with {select} or {metric} reported: no best config."
        )
    elif best is None:
        lines.append(f"No trial reported {select} or {metric}: no best config.")
    else:
        lines.append(
            f"Best config by {best['selected_by']} = {_fmt(best['value'])} (trial {best['trial_id']}): "
            f"{_fmt_config(best['config'])}"
        )
        if best["selected_by"] != select:
            lines.append(f"  (no finished trial reported {select}; ranked by {best['selected_by']})")
    return "\n".join(lines)


def interrupted_line(report: Mapping) -> str:
    """The one line an interrupted sweep ends with: trials cut, trials not started, the command to continue."""
    cut, waiting = report["num_interrupted"], report["num_not_started"]
    return (
        f"Sweep interrupted: {cut} trial{'' if cut == 1 else 's'} cut, {waiting} not started; "
        f"continue with: {report['resume_command']}"
    )


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _fmt_config(config: Mapping) -> str:
    return ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in config.items())
