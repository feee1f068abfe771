"""The evaluation protocol every comparison follows, pure (numpy/scipy): seeds, intervals, verdicts, cost.

Three roles, never mixed (DESIGN "Evaluation protocol"):

- the **training reward**: what a run optimises;
- the **validation signal** (:meth:`sepo_ray.tasks.base.Task.validation`): the only thing a selection (tuning,
  early stopping, choosing a base run or a setting) reads, drawn with :data:`VALIDATION_SEED`;
- the **evaluation signals** (the task's scorer): read only by the final report.

Seeds: tuning seeds are disjoint from reported seeds (:func:`check_seeds`); a reported point is a mean over
training seeds with a 95 % t-interval (:func:`seed_summary`); "A beats B" needs the seed-paired difference's
95 % interval to exclude 0, otherwise the two tie (:func:`paired_verdict`).

Cost: the oracle calls to deliver K designs are the method's tuning calls + its training calls + K x its calls per
design (:func:`calls_for_designs`); the ranking depends on K, so reports show several (:data:`DESIGNS`) and the
winner at each (:func:`winners_by_designs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

#: sampling seed of every validation draw: never a report's sampling seed (reports sample with the training seeds,
#: best-of-N pools with 10,000 (s + 1) + c, SVDD with 20,000 (s + 1)), and the same draw at every evaluation
VALIDATION_SEED = 999_331
#: the first tuning seed: tuning trials train with seeds from here, disjoint from any reported seed below it
TUNING_SEED = 1_000
#: the numbers of designs a report prices (a user orders 64, 640 or 6,400 sequences)
DESIGNS = (64, 640, 6_400)
#: the confidence level of every interval
LEVEL = 0.95


def t_interval(values: Sequence[float], level: float = LEVEL) -> list[float]:
    """[low, high]: the two-sided ``level`` Student-t interval of the mean of ``values`` (n - 1 degrees of
    freedom); [nan, nan] for fewer than two finite values."""
    from scipy.stats import t

    arr = np.asarray([v for v in values if v == v], dtype=np.float64)
    if len(arr) < 2:
        return [math.nan, math.nan]
    half = float(t.ppf(0.5 + level / 2, len(arr) - 1)) * float(arr.std(ddof=1)) / math.sqrt(len(arr))
    mean = float(arr.mean())
    return [mean - half, mean + half]


def seed_summary(values: Sequence[float]) -> dict:
    """{mean, std, se, ci95, n, values} of one metric over seeds (std with ddof 1; se = std / sqrt(n))."""
    arr = np.asarray(values, dtype=np.float64)
    n = len(arr)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "se": math.nan, "ci95": [math.nan, math.nan], "n": 0,
                "values": []}  # fmt: skip
    std = float(arr.std(ddof=1)) if n > 1 else 0.0
    return {
        "mean": float(arr.mean()),
        "std": std,
        "se": std / math.sqrt(n),
        "ci95": t_interval(arr),
        "n": n,
        "values": [float(v) for v in arr],
    }


def paired_verdict(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> dict:
    """A against B, seed by seed (``a[i]`` and ``b[i]`` at the same seed): the mean difference a - b, its 95 %
    t-interval and the verdict "beats" / "loses" (the interval excludes 0 on that side) or "tie" (it covers 0,
    or fewer than two pairs). ValueError when the two do not have the same number of seeds."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_verdict pairs seed by seed: {len(a)} and {len(b)} values")
    diff = a - b
    low, high = t_interval(diff)
    better, worse = (low > 0, high < 0) if higher_is_better else (high < 0, low > 0)
    verdict = "tie" if low != low else "beats" if better else "loses" if worse else "tie"
    return {"difference": float(diff.mean()) if len(diff) else math.nan, "ci95": [low, high], "verdict": verdict,
            "n": int(len(diff))}  # fmt: skip


def check_seeds(report_seeds: Sequence[int], tuning_seeds: Sequence[int]) -> None:
    """ValueError (one line) when a seed is used both to tune and to report."""
    shared = sorted(set(report_seeds) & set(tuning_seeds))
    if shared:
        raise ValueError(
            f"seeds {shared} would both tune and be reported: tuning seeds start at {min(tuning_seeds)}; "
            "report with other --seeds"
        )


def calls_for_designs(cost: Mapping[str, int], tuning_calls: int, designs: int) -> int:
    """Oracle calls to deliver ``designs`` sequences: tuning + training (``cost["train"]``, once) + designs x
    ``cost["per_design"]`` (selection, every design)."""
    return int(tuning_calls) + int(cost["train"]) + int(designs) * int(cost["per_design"])


def winners_by_designs(
    rows: Sequence[Mapping], designs: Sequence[int], score: str, realism: str | None, realism_min: float,
    higher_is_better: bool = True,
) -> dict[str, dict]:  # fmt: skip
    """Which method wins at each number of designs K, on the total-calls axis.

    ``rows``: report rows with ``method``, ``name``, ``cost`` {train, per_design}, ``tuning_calls`` and
    ``metrics[score]["values"]`` (per training seed). At K, a row's total is :func:`calls_for_designs`. The budget
    of K is the largest total any fine-tuning row spends (``finetune`` kind: a cost with no per-design part and a
    train part; every row's total when there is none): rows within it compete, each method by its best row (mean
    ``score``) among those whose mean ``realism`` >= ``realism_min``. The winner is the best; it "beats" the
    runner-up only when their seed-paired difference's 95 % interval excludes 0, else the two "tie".
    -> {str(K): {budget_calls, entries: [{name, method, calls}], winner, runner_up, verdict, difference, ci95}}.
    """
    sign = 1.0 if higher_is_better else -1.0
    out = {}
    for k in designs:
        totals = [(r, calls_for_designs(r["cost"], r.get("tuning_calls", 0), k)) for r in rows]
        trained = [c for r, c in totals if r["cost"]["per_design"] == 0 and r["cost"]["train"] > 0]
        cap = max(trained) if trained else max((c for _, c in totals), default=0)
        best: dict[str, tuple[Mapping, int]] = {}
        for r, c in totals:
            m = r["metrics"].get(score)
            if c > cap or m is None or m["mean"] != m["mean"]:
                continue
            if realism and r["metrics"][realism]["mean"] < realism_min:
                continue
            if (
                r["method"] not in best
                or sign * m["mean"] > sign * best[r["method"]][0]["metrics"][score]["mean"]
            ):
                best[r["method"]] = (r, c)
        ranked = sorted(best.values(), key=lambda rc: -sign * rc[0]["metrics"][score]["mean"])
        entry = {
            "budget_calls": cap,
            "entries": [{"name": r["name"], "method": r["method"], "calls": c} for r, c in ranked],
            "winner": ranked[0][0]["name"] if ranked else None,
            "runner_up": ranked[1][0]["name"] if len(ranked) > 1 else None,
            "verdict": None,
            "difference": None,
            "ci95": None,
        }
        if len(ranked) > 1:
            a, b = ranked[0][0]["metrics"][score]["values"], ranked[1][0]["metrics"][score]["values"]
            if len(a) == len(b):
                v = paired_verdict(a, b, higher_is_better)
                entry.update(verdict=v["verdict"], difference=v["difference"], ci95=v["ci95"])
            else:
                entry["verdict"] = "unpaired"
        out[str(k)] = entry
    return out


def protocol_record(
    selection_signal: str, evaluation_signals: Sequence[str], tuning_seeds: Sequence[int],
    report_seeds: Sequence[int], tuning_calls: Mapping[str, int], designs: Sequence[int], min_report_seeds: int,
    threads: int, tuned_horizon: int | None,
) -> dict:  # fmt: skip
    """The ``protocol`` object of a result file: the signals of each role, the seeds, the tuning calls charged to
    each method, the numbers of designs priced, and whether the seeds suffice for a reported result."""
    return {
        "selection_signal": selection_signal,
        "evaluation_signals": list(evaluation_signals),
        "tuning_seeds": [int(s) for s in tuning_seeds],
        "report_seeds": [int(s) for s in report_seeds],
        "tuning_calls": {k: int(v) for k, v in tuning_calls.items()},
        "designs": [int(k) for k in designs],
        "min_report_seeds": int(min_report_seeds),
        "exploratory": len(report_seeds) < min_report_seeds,
        "interval": f"{LEVEL:.0%} Student-t over training seeds; A beats B only where the seed-paired difference's "
        "interval excludes 0",
        "torch_threads": int(threads),
        "tuned_horizon_calls": tuned_horizon,
    }
