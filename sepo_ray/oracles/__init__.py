"""Reward oracles: callables ``oracle(sequences) -> np.ndarray (N,)``, built by name with :func:`get_oracle`.

Registered names:

- ``dna_ft``: :class:`FTOracle` (HepG2 log-odds, fine-tuning oracle — the default DNA reward);
- ``dna_eval``: :class:`EvalOracle` (HepG2 log-odds, evaluation oracle — Pred-Activity);
- ``dna_atac``: :class:`AccessibilityClassifier` (probability of a real-DHS-like sequence — ATAC-Acc);
- ``motif_count``: :class:`MotifScanner` (liver-TF motif hits per sequence, JASPAR).

The Ray actor pool that serves any of them lives in :mod:`sepo_ray.oracles.pool`.
"""

from __future__ import annotations

from collections.abc import Callable

from .dna import (
    ARTIFACT_DIR,
    AccessibilityClassifier,
    ClassifierOracle,
    EvalOracle,
    FTOracle,
    SequenceOracle,
    artifact_path,
)
from .motifs import LIVER_MOTIFS, MotifScanner, log_odds_pwm, score_threshold

ORACLES: dict[str, Callable[..., Callable]] = {
    "dna_ft": FTOracle,
    "dna_eval": EvalOracle,
    "dna_atac": AccessibilityClassifier,
    "motif_count": MotifScanner,
}


def get_oracle(name: str, **kwargs) -> Callable:
    """Build a registered oracle by name (kwargs go to its constructor, e.g. ``device="cuda"``).

    Unknown names raise ValueError listing the valid ones.
    """
    if name not in ORACLES:
        raise ValueError(f"oracle name must be one of {sorted(ORACLES)}, got {name!r}")
    return ORACLES[name](**kwargs)


__all__ = [
    "ARTIFACT_DIR",
    "LIVER_MOTIFS",
    "ORACLES",
    "AccessibilityClassifier",
    "ClassifierOracle",
    "EvalOracle",
    "FTOracle",
    "MotifScanner",
    "SequenceOracle",
    "artifact_path",
    "get_oracle",
    "log_odds_pwm",
    "score_threshold",
]
