"""What an experiment runs, pure: its entries (methods, with a KL weight each under ``--alphas``), the
iterations per budget, the checkpoint frequency, standard errors, and the best row under a realism guard."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sepo_ray.methods import Method, get_method
from sepo_ray.settings import parse_overrides


@dataclass(frozen=True)
class Entry:
    """A row family of the experiment: a method, under its own name, with the settings that make its runs."""

    name: str
    method: Method
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        return self.method.trains


def plan_entries(methods: Sequence[str], alphas: Sequence[float] | None = None) -> dict[str, Entry]:
    """Entry name -> entry: each method; with ``alphas`` each fine-tuning method at each KL weight instead
    (``<method>_kl<alpha>``, the runs of the reward-vs-KL frontier). ValueError names an unknown method."""
    entries = {}
    for name in methods:
        method = get_method(name)
        if method.trains and alphas:
            for a in alphas:
                entries[f"{name}_kl{a:g}"] = Entry(
                    f"{name}_kl{a:g}", method, {**method.settings, "kl_alpha": a}
                )
        else:
            entries[name] = Entry(name, method, dict(method.settings))
    return entries


def split_sets(items: Sequence[str], trained: Sequence[str]) -> tuple[dict, dict[str, dict]]:
    """``--set`` items -> (settings for every run, {entry: its own settings}); ``ENTRY.KEY=VALUE`` is one entry's.
    ValueError names a bad item or an entry that trains nothing."""
    common, own = [], {m: [] for m in trained}
    for item in items:
        key = item.partition("=")[0]
        prefix, dot, name = key.partition(".")
        if dot:
            if prefix not in own:
                raise ValueError(
                    f"--set {item!r}: {prefix!r} is not a fine-tuning entry here ({', '.join(own)})"
                )
            own[prefix].append(f"{name}{item[len(key) :]}")
        else:
            common.append(item)
    return parse_overrides(common), {m: parse_overrides(v) for m, v in own.items()}


def budget_iterations(budget: int, batch: int, what: str) -> int:
    """Iterations that spend exactly ``budget`` calls at ``batch`` sequences each; ValueError otherwise."""
    if budget % batch:
        raise ValueError(f"{what}: {budget} calls is not a whole number of iterations of {batch} sequences")
    return budget // batch


def checkpoint_every(iterations: Sequence[int]) -> int:
    """A checkpoint frequency that lands on every one of ``iterations``: their greatest common divisor."""
    return math.gcd(*iterations)


def standard_errors(metrics: Mapping[str, Mapping[str, Any]], num_seeds: int) -> dict:
    """{metric: {mean, std, se, ci95, n, values}} over seeds (:func:`sepo_ray.protocol.seed_summary`) from each
    metric's per-seed ``values``; a metric without them keeps its mean and std, se = std / sqrt(seeds) and a 95 %
    t-interval from those."""
    from sepo_ray.protocol import seed_summary

    out = {}
    for k, v in metrics.items():
        if "values" in v:
            out[k] = seed_summary(v["values"])
            continue
        n = max(1, num_seeds)
        se = float(v["std"]) / math.sqrt(n)
        half = _t_quantile(n) * se if n > 1 else math.nan
        out[k] = {**v, "se": se, "ci95": [v["mean"] - half, v["mean"] + half], "n": n}
    return out


def _t_quantile(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def best_row(rows: Sequence[Mapping], score: str, realism: str | None, realism_min: float) -> Mapping | None:
    """The row with the highest mean ``score`` among rows whose mean ``realism`` >= realism_min; None if none."""
    ok = [r for r in rows if realism is None or r["metrics"][realism]["mean"] >= realism_min]
    return max(ok, key=lambda r: r["metrics"][score]["mean"]) if ok else None


def final_kl(history: Sequence[Mapping], iteration: int, window: int = 3) -> float:
    """Mean path KL to the pretrained model (nats per sequence) over a run's last ``window`` iterations up to
    ``iteration`` (one batch's KL is noisy)."""
    kls = [float(h["kl"]) for h in history if h["iteration"] <= iteration][-window:]
    return float(sum(kls) / len(kls)) if kls else float("nan")


def train_seconds(history: Sequence[Mapping], iteration: int) -> float:
    """A run's training time up to ``iteration``: the sum of its iterations' seconds (``time_s``), which a resumed
    run keeps from before its stop; the time it lay stopped is not counted."""
    return float(sum(float(h.get("time_s", 0.0)) for h in history if h["iteration"] <= iteration))
