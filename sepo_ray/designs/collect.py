"""The sampling loop of a design order: draw in batches, reject by constraints, drop duplicates, stop in bounds.

A *group* is what designs are collected for: one prompt of a task with prompts, or the whole order. Each group
needs ``needed[g]`` distinct sequences meeting every constraint. Batches are drawn until every group has them, or
until a bound ends the order with :class:`DesignError` (one line): the draws (``max_draws``), the wall clock
(``time_limit_s``), or, earlier, the projection that even an optimistic acceptance rate cannot reach the goal within
them. The optimistic rate is (accepted + 3) / drawn, the rule-of-three 95 % upper bound when nothing was accepted
(Hanley & Lippman-Hand 1983), so an order whose constraints no sequence meets stops after about 3 x needed / bound
of the draws instead of spending them all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Constraint = tuple[str, Callable[[list[str]], np.ndarray]]
#: over-draw of the first batch (no acceptance rate known yet) and of later ones (on the rate measured)
FIRST_BATCH_FACTOR = 1.5
LATER_BATCH_FACTOR = 1.2


class DesignError(ValueError):
    """An order that cannot be delivered within its bounds (one line)."""


@dataclass
class Collection:
    """What the loop collected: per group the distinct sequences meeting every constraint, in draw order, and the
    counts of ``summary.json``."""

    accepted: list[list[str]]
    drawn: int = 0
    #: constraint name -> sequences failing it (a sequence may fail several)
    failed: dict[str, int] = field(default_factory=dict)
    rejected: int = 0  # sequences failing at least one constraint
    duplicates: int = 0  # sequences meeting every constraint but drawn before (exact, per group)
    batches: int = 0
    seconds: float = 0.0
    #: the first draws as drawn, before any constraint: (group, sequence) (the comparison rows may reuse them)
    raw: list[tuple[int, str]] = field(default_factory=list)

    def counts(self) -> dict:
        return {
            "drawn": self.drawn,
            "met_every_constraint": self.drawn - self.rejected,
            "rejected": self.rejected,
            "failed_per_constraint": dict(self.failed),
            "duplicates_removed": self.duplicates,
            "batches": self.batches,
            "sampling_s": round(self.seconds, 1),
        }


def apply_constraints(sequences: list[str], constraints: Sequence[Constraint]) -> tuple[np.ndarray, dict]:
    """(keep: bool (N,), {name: how many fail it}); a predicate must return one bool per sequence."""
    keep = np.ones(len(sequences), dtype=bool)
    failed = {}
    for name, predicate in constraints:
        ok = np.asarray(predicate(sequences), dtype=bool).reshape(-1)
        if ok.shape != (len(sequences),):
            raise ValueError(
                f"constraint {name!r} returned {ok.shape[0]} values for {len(sequences)} sequences"
            )
        failed[name] = int((~ok).sum())
        keep &= ok
    return keep, failed


def plan_batch(remaining: Sequence[int], accepted: int, drawn: int, batch_size: int) -> list[int]:
    """Draws per group for the next batch: what each group still needs over the acceptance rate measured so far
    (over-drawn by :data:`FIRST_BATCH_FACTOR` / :data:`LATER_BATCH_FACTOR`), at most ``batch_size`` in all."""
    if drawn:
        rate = max((accepted + 1) / (drawn + 1), 1e-3)
        want = [math.ceil(r * LATER_BATCH_FACTOR / rate) if r else 0 for r in remaining]
    else:
        want = [math.ceil(r * FIRST_BATCH_FACTOR) for r in remaining]
    total = sum(want)
    if total <= batch_size:
        return want
    scaled = [math.floor(w * batch_size / total) for w in want]
    for g in sorted(
        range(len(want)), key=lambda g: -want[g]
    ):  # the rounding's leftovers, largest needs first
        if sum(scaled) >= batch_size:
            break
        if want[g] > scaled[g]:
            scaled[g] += 1
    return scaled


def optimistic_rate(accepted: int, drawn: int) -> float:
    """An upper bound on the fraction of draws that yield a new design: (accepted + 3) / drawn, at most 1."""
    return min(1.0, (accepted + 3) / max(drawn, 1))


def collect(
    draw: Callable[[list[int]], list[str]],
    needed: Sequence[int],
    constraints: Sequence[Constraint] = (),
    *,
    max_draws: int,
    time_limit_s: float = math.inf,
    batch_size: int = 256,
    keep_raw: int = 0,
    log: Callable[[str], None] | None = print,
    clock: Callable[[], float] = time.monotonic,
) -> Collection:
    """Collects ``needed[g]`` distinct sequences meeting every constraint for each group g.

    ``draw(groups)`` returns one new sequence per entry of ``groups`` (the group each is drawn for), seeded by the
    caller so that the same order draws the same sequences. ``keep_raw``: how many of the first draws to keep as
    drawn (:attr:`Collection.raw`). One progress line per batch goes to ``log``. Raises :class:`DesignError` when
    a bound is reached or projected to be reached first.
    """
    groups = len(needed)
    out = Collection(accepted=[[] for _ in range(groups)], failed={name: 0 for name, _ in constraints})
    seen: list[set[str]] = [set() for _ in range(groups)]
    start = clock()
    while True:
        remaining = [max(0, needed[g] - len(out.accepted[g])) for g in range(groups)]
        if not any(remaining):
            out.seconds = clock() - start
            return out
        got = sum(len(a) for a in out.accepted)
        plan = plan_batch(remaining, got, out.drawn, min(batch_size, max_draws - out.drawn))
        which = [g for g, k in enumerate(plan) for _ in range(k)]
        sequences = list(draw(which))
        if len(sequences) != len(which):
            raise ValueError(f"draw returned {len(sequences)} sequences for {len(which)} asked")
        if len(out.raw) < keep_raw:
            out.raw += list(zip(which, sequences))[: keep_raw - len(out.raw)]
        keep, failed = apply_constraints(sequences, constraints)
        for name, k in failed.items():
            out.failed[name] += k
        out.drawn += len(sequences)
        out.rejected += int((~keep).sum())
        out.batches += 1
        for g, seq, ok in zip(which, sequences, keep):
            if not ok:
                continue
            if seq in seen[g]:
                out.duplicates += 1
                continue
            seen[g].add(seq)
            if len(out.accepted[g]) < needed[g]:
                out.accepted[g].append(seq)
        got = sum(len(a) for a in out.accepted)
        elapsed = clock() - start
        if log is not None:
            rejected = ", ".join(f"{n} {k}" for n, k in out.failed.items()) or "no constraints"
            log(
                f"batch {out.batches}: {got}/{sum(needed)} accepted, {out.drawn} drawn, {out.rejected} rejected "
                f"({rejected}), {out.duplicates} duplicates, {elapsed:.0f}s"
            )
        left = sum(max(0, needed[g] - len(out.accepted[g])) for g in range(groups))
        if left:
            _check_bounds(out, got, left, elapsed, max_draws, time_limit_s)


def _check_bounds(
    out: Collection, got: int, left: int, elapsed: float, max_draws: int, limit_s: float
) -> None:
    """Raises :class:`DesignError` when a bound is reached, or when at the optimistic rate the designs still
    missing would take more draws or seconds than are left."""
    rate = optimistic_rate(got, out.drawn)
    projected = left / rate  # draws still needed at the optimistic rate
    reason = None
    if out.drawn >= max_draws:
        reason = f"the bound of {max_draws:,} draws is reached"
    elif elapsed >= limit_s:
        reason = f"the time limit of {limit_s:g} s is reached"
    elif out.drawn + projected > max_draws:
        reason = (
            f"even at {100 * rate:.2g} % acceptance (an upper bound) the {left:,} missing would need about "
            f"{projected:,.0f} more draws, over the bound of {max_draws:,}"
        )
    elif elapsed / out.drawn * projected > limit_s - elapsed:
        reason = (
            f"at {100 * rate:.2g} % acceptance (an upper bound) the {left:,} missing would need about "
            f"{elapsed / out.drawn * projected:,.0f} s more, over the time limit of {limit_s:g} s"
        )
    if reason is None:
        return
    failing = ", ".join(f"{name} rejected {k:,}" for name, k in out.failed.items() if k) or "none rejected"
    raise DesignError(
        f"only {got:,} of {got + left:,} designs after {out.drawn:,} draws ({failing}; {out.duplicates:,} "
        f"duplicates): {reason}; loosen the constraints, or raise --max-draws-per-candidate / --time-limit"
    )
