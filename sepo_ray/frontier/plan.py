"""The frontier's methods and budgets, pure: settings per method, iterations per budget, standard errors, the best
row under a realism guard."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from sepo_ray.settings import parse_overrides

#: fine-tuning methods: name -> settings overrides
FINETUNE: dict[str, list[str]] = {
    "sepo": ["objective=sepo"],
    "sepo_t": ["objective=sepo_t"],
    "trajectory": ["objective=trajectory"],
}
SELECTION = ("pretrained", "best_of_n", "svdd")
METHODS = (*SELECTION, *FINETUNE, "finetuned_best_of_n")
#: the fields equal tuning searches, log-uniformly in these ranges
#: (alpha below 0.1 fooled the DNA oracle at every lr tried; one per-token scale for every objective)
TUNE_SPACE: dict[str, tuple[float, float]] = {"kl_alpha": (0.1, 3.0), "lr": (1e-4, 1e-3)}
DEFAULT_BUDGETS = (512, 1024, 2048)


def split_sets(items: Sequence[str], methods: Sequence[str]) -> tuple[dict, dict[str, dict]]:
    """``--set`` items -> (overrides for every run, {method: its own overrides}); ``METHOD.KEY=VALUE`` is one
    method's. ValueError names a bad item or an unknown method."""
    common, own = [], {m: [] for m in methods}
    for item in items:
        key = item.partition("=")[0]
        prefix, dot, field = key.partition(".")
        if dot:
            if prefix not in FINETUNE:
                raise ValueError(
                    f"--set {item!r}: {prefix!r} is not a fine-tuning method ({', '.join(FINETUNE)})"
                )
            own.setdefault(prefix, []).append(f"{field}{item[len(key) :]}")
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


def standard_errors(metrics: Mapping[str, Mapping[str, float]], num_seeds: int) -> dict:
    """{metric: {mean, std, se}} with se = std / sqrt(seeds)."""
    root = math.sqrt(max(1, num_seeds))
    return {k: {**v, "se": float(v["std"]) / root} for k, v in metrics.items()}


def best_row(rows: Sequence[Mapping], score: str, realism: str | None, realism_min: float) -> Mapping | None:
    """The row with the highest mean ``score`` among rows whose mean ``realism`` >= realism_min; None if none."""
    ok = [r for r in rows if realism is None or r["metrics"][realism]["mean"] >= realism_min]
    return max(ok, key=lambda r: r["metrics"][score]["mean"]) if ok else None
