"""Example user rewards: plain functions ``f(sequences: list[str]) -> one float per sequence``.

Pass any of them (or your own ``module:function``) with ``python -m sepo_ray.run dna --reward MODULE:FUNCTION``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _count_overlapping(seq: str, motif: str) -> int:
    count, start = 0, seq.find(motif)
    while start != -1:
        count += 1
        start = seq.find(motif, start + 1)
    return count


def motif_count(sequences: Sequence[str], motif: str = "TATA") -> np.ndarray:
    """Occurrences (overlapping) of ``motif`` in each sequence."""
    return np.array([_count_overlapping(s, motif) for s in sequences], dtype=np.float64)


def gc_content(sequences: Sequence[str]) -> np.ndarray:
    """Fraction of G or C in each sequence."""
    return np.array([(s.count("G") + s.count("C")) / max(1, len(s)) for s in sequences], dtype=np.float64)
