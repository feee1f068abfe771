"""Pure pieces of a design order after sampling: best-of-N selection, exact de-duplication and ranking."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def best_of_n(rewards: np.ndarray, n: int) -> np.ndarray:
    """Indices of the winners of best-of-N: candidates ``[j N, (j + 1) N)`` form design j's pool and the one of
    largest reward wins (the first on a tie). ``rewards`` float (M,), M a multiple of N -> int64 (M / N,)."""
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if n < 1 or rewards.size % n:
        raise ValueError(f"best_of_n: {rewards.size} candidates do not split into pools of {n}")
    pools = rewards.reshape(-1, n)  # (M / N, N)
    return np.arange(0, rewards.size, n) + pools.argmax(axis=1)  # (M / N,)


def dedupe(table: pd.DataFrame, key: str | list[str] = "sequence") -> tuple[pd.DataFrame, int]:
    """(``table`` without exact repeats of ``key``, first occurrence kept in order; how many were removed)."""
    keep = ~table.duplicated(subset=key, keep="first")
    return table.loc[keep].reset_index(drop=True), int((~keep).sum())


def rank(table: pd.DataFrame, column: str, descending: bool = True) -> pd.DataFrame:
    """``table`` sorted by ``column`` (NaN last; ties keep their order: a stable sort), with ``rank`` = 1, 2, ...
    as its second column."""
    if column not in table.columns:
        raise ValueError(f"rank: no column {column!r} in {list(table.columns)}")
    out = table.sort_values(column, ascending=not descending, na_position="last", kind="stable")
    out = out.drop(columns="rank", errors="ignore").reset_index(drop=True)
    out.insert(min(1, len(out.columns)), "rank", np.arange(1, len(out) + 1))
    return out
