"""Liver transcription-factor motif scanning with JASPAR position weight matrices (pyjaspar, offline SQLite).

A motif's count matrix C (w, 4) becomes a log-odds PWM against a uniform background b = 1/4:

    P[j, a] = (C[j, a] + 1/4) / (sum_a C[j, a] + 1),      S[j, a] = log2(P[j, a] / b)

A window x_{i..i+w-1} scores sum_j S[j, x_{i+j}]; it is a hit when that score reaches the threshold whose
right-tail probability under i.i.d. uniform bases is ``pvalue`` (1e-4 by default, as FIMO), computed exactly
by dynamic programming over scores rounded to 1/100 bit. Both strands are scanned (the reverse complement PWM
S_rc[j, a] = S[w-1-j, 3-a]); a window that hits on both strands counts once. Under the background a 200 bp
sequence has about 2 * 192 * 1e-4 = 0.04 chance hits per motif.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data.sequences import NUM_TOKENS, SEQ_LEN

JASPAR_RELEASE = "JASPAR2024"
#: Core hepatocyte TFs (one matrix per motif family, so that no binding site is counted twice).
LIVER_MOTIFS: dict[str, str] = {
    "HNF4A": "MA0114.5",
    "HNF1A": "MA0046.3",
    "FOXA2": "MA0047.4",
    "CEBPB": "MA0466.4",
    "ONECUT1": "MA0679.3",
}


@cache
def jaspar_counts(matrix_id: str, release: str = JASPAR_RELEASE) -> np.ndarray:
    """Count matrix (w, 4) in ACGT order of a versioned JASPAR matrix id, from pyjaspar's bundled SQLite."""
    try:
        from pyjaspar import jaspardb
    except ImportError as e:  # pragma: no cover - pyjaspar is a dependency
        raise ImportError("the motif scanner needs pyjaspar: pip install 'pyjaspar>=3.0'") from e
    motif = jaspardb(release=release).fetch_motif_by_id(matrix_id)
    if motif is None:
        raise ValueError(f"matrix_id {matrix_id!r} not found in {release}")
    return np.array([[motif.counts[a][j] for a in "ACGT"] for j in range(motif.length)], dtype=np.float64)


def log_odds_pwm(counts: np.ndarray, pseudocount: float = 1.0) -> np.ndarray:
    """Counts (w, 4) -> log2-odds PWM (w, 4) against a uniform background; pseudocount split evenly."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[1] != NUM_TOKENS:
        raise ValueError(f"counts must have shape (w, 4), got {counts.shape}")
    probs = (counts + pseudocount / NUM_TOKENS) / (counts.sum(1, keepdims=True) + pseudocount)  # (w, 4)
    return np.log2(probs * NUM_TOKENS)  # (w, 4)


def score_threshold(pwm: np.ndarray, pvalue: float = 1e-4, resolution: float = 0.01) -> float:
    """Smallest score s with P(score >= s) <= pvalue for a window of i.i.d. uniform bases (exact DP).

    Scores are rounded to ``resolution`` bits; the distribution of the sum is built column by column.
    Returns +inf if even the best window is more likely than ``pvalue``.
    """
    if not 0.0 < pvalue < 1.0:
        raise ValueError(f"pvalue must lie in (0, 1), got {pvalue}")
    ints = np.round(np.asarray(pwm) / resolution).astype(np.int64)  # (w, 4)
    lo = int(ints.min(1).sum())
    dist = np.zeros(int(ints.max(1).sum()) - lo + 1)
    dist[0] = 1.0
    for col in ints:
        new = np.zeros_like(dist)
        shift0 = col.min()
        for v in col:
            k = int(v - shift0)
            new[k:] += dist[: len(dist) - k] / NUM_TOKENS
        dist = new  # dist[i] = P(sum of columns so far = their minima + i)
    tail = np.cumsum(dist[::-1])[::-1]  # P(sum >= lo + i)
    ok = np.flatnonzero(tail <= pvalue)
    if len(ok) == 0:
        return float("inf")
    return float((lo + ok[0]) * resolution) - 1e-9


class MotifScanner:
    """Counts liver-TF motif hits per sequence: ``scanner(sequences) -> float64 (N,)`` total hits.

    Args:
        motifs: name -> versioned JASPAR matrix id (default :data:`LIVER_MOTIFS`), or name -> count matrix (w, 4).
        pvalue: per-window p-value of the hit threshold (default 1e-4).
        release: JASPAR release of pyjaspar's SQLite files.
        device: torch device for the scan; batch_size: sequences per batch.
    """

    def __init__(
        self,
        motifs: Mapping[str, str | np.ndarray] | None = None,
        pvalue: float = 1e-4,
        release: str = JASPAR_RELEASE,
        device: str | torch.device = "cpu",
        batch_size: int = 2048,
        length: int | None = SEQ_LEN,
    ):
        motifs = dict(LIVER_MOTIFS if motifs is None else motifs)
        if not motifs:
            raise ValueError("motifs must name at least one motif")
        self.names = list(motifs)
        self.matrix_ids = {n: (m if isinstance(m, str) else "custom") for n, m in motifs.items()}
        self.pvalue = float(pvalue)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.length = length
        self.pwms: list[np.ndarray] = []
        self.thresholds: list[float] = []
        for name in self.names:
            m = motifs[name]
            counts = jaspar_counts(m, release) if isinstance(m, str) else np.asarray(m, dtype=np.float64)
            pwm = log_odds_pwm(counts)
            self.pwms.append(pwm)
            self.thresholds.append(score_threshold(pwm, self.pvalue))
        # One conv for all motifs: weight (2M, 4, w_max), forward and reverse-complement PWM of each motif,
        # zero-padded on the right; the input is zero-padded by w_max - 1 so that every start position exists,
        # and starts past L - w_m (windows that would leave the sequence) are masked out per motif.
        self.widths = [len(p) for p in self.pwms]
        w_max = max(self.widths)
        weight = np.zeros((2 * len(self.pwms), NUM_TOKENS, w_max), dtype=np.float32)
        for m, pwm in enumerate(self.pwms):
            weight[2 * m, :, : len(pwm)] = pwm.T
            weight[2 * m + 1, :, : len(pwm)] = pwm[::-1, ::-1].T
        self._weight = torch.from_numpy(weight).to(self.device)  # (2M, 4, w_max)
        self._threshold = torch.tensor(self.thresholds, dtype=torch.float32, device=self.device)  # (M,)

    def hits(self, sequences: Sequence[str] | Tensor | np.ndarray) -> np.ndarray:
        """Hits per sequence and motif: int64 (N, M), motifs in the order of :attr:`names`."""
        from .data.sequences import as_tokens

        x = as_tokens(sequences, self.length)
        n_motifs, w_max = len(self.names), self._weight.shape[-1]
        length = x.shape[1]
        valid = torch.arange(length, device=self.device)[None, :] <= (
            length - torch.tensor(self.widths, device=self.device)[:, None]
        )  # (M, L) start positions whose window fits
        out = []
        for i in range(0, len(x), self.batch_size):
            onehot = F.one_hot(x[i : i + self.batch_size].to(self.device), NUM_TOKENS).float().transpose(1, 2)
            scores = F.conv1d(F.pad(onehot, (0, w_max - 1)), self._weight)  # (B, 2M, L)
            scores = scores.view(len(onehot), n_motifs, 2, length).amax(2)  # (B, M, L) best strand
            hit = (scores >= self._threshold[None, :, None]) & valid  # (B, M, L)
            out.append(hit.sum(-1).cpu())  # (B, M)
        if not out:
            return np.zeros((0, n_motifs), dtype=np.int64)
        return torch.cat(out).numpy().astype(np.int64)

    def __call__(self, sequences: Sequence[str] | Tensor | np.ndarray) -> np.ndarray:
        """Total liver-motif hits per sequence, float64 (N,)."""
        return self.hits(sequences).sum(1).astype(np.float64)

    def __repr__(self) -> str:
        return f"MotifScanner({self.matrix_ids}, pvalue={self.pvalue})"
