"""DNA benchmark metrics (paper Table 2 layout, DRAKES protocol, App. E.2) on the embedded DHS task.

Per-sequence scores (:meth:`DNAScorer.scores`):

- ``pred_activity``: evaluation-oracle HepG2 log-odds (:class:`~sepo_ray.tasks.dna.oracles.EvalOracle`);
- ``atac``: accessibility-classifier probability of a real-DHS-like sequence;
- ``motif_count``: liver-TF motif hits (:class:`~sepo_ray.tasks.dna.motifs.MotifScanner`);
- ``log_lik``: ELBO of the sequence under the pretrained generator, nats per sequence
  (``sepo_ray.diffusion.elbo`` of the ``elbo_steps``-step sampler, one masking draw per step, seeded).

Set-level metrics (:func:`dna_metrics`, keys :data:`METRIC_KEYS`):

- ``pred_activity_median``: median of ``pred_activity`` (Pred-Activity);
- ``atac_acc``: percentage (0-100) of sequences with ``atac`` > 0.5 (ATAC-Acc);
- ``kmer3_corr``: Pearson correlation between the pooled 3-mer frequency vector (64 entries) of the sequences and
  that of the reference set: the real HepG2-specific DHS of the test chromosome (958 sequences, which neither the
  generator nor any oracle saw; DRAKES compares with its top-activity HepG2 sequences) (3-mer Corr);
- ``log_lik_median``: median of ``log_lik`` (Log-Lik);
- ``motif_enrichment``: log2 of the mean liver-motif hits per sequence relative to the same reference set,
  log2((mean hits + 0.01) / (reference mean hits + 0.01)); 0 = as many liver-TF sites as real HepG2 DHS,
  negative = fewer (real non-HepG2 DHS score about -2).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .data.sequences import SEQ_LEN, as_tokens, kmer_frequencies

METRIC_LABELS = {
    "pred_activity_median": "Pred-Activity (median) ↑",
    "atac_acc": "ATAC-Acc (%) ↑",
    "kmer3_corr": "3-mer Corr ↑",
    "log_lik_median": "Log-Lik (median) ↑",
    "motif_enrichment": "Motif enrichment (log2) ↑",
}
METRIC_KEYS = tuple(METRIC_LABELS)
#: rows of real test-chromosome DHS in the evaluation table
REFERENCE_ROWS = ("real_hepg2_test", "real_nonhepg2_test")
SCORE_KEYS = ("pred_activity", "atac", "motif_count", "log_lik")
#: Default ELBO steps per sequence for ``log_lik`` (cost: this many generator forwards per sequence). With the
#: shipped generator the median ELBO of real HepG2 test DHS is -267.3 nats at 4 steps, -265.5 at 8, -264.9 at 32:
#: the 4-step bound is about 2.4 nats looser there, at an eighth of the cost of 32 steps.
ELBO_STEPS = 4
MOTIF_PSEUDOCOUNT = 0.01


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length vectors; nan if either is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"pearson needs two vectors of equal length >= 2, got {a.shape} and {b.shape}")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def kmer3_corr(
    sequences: Sequence[str] | Tensor, reference: np.ndarray | Sequence[str] | Tensor | None = None
) -> float:
    """Pearson of pooled 3-mer frequencies (64,) of ``sequences`` vs ``reference`` (a 64-vector or sequences).

    Default reference: real HepG2-specific DHS of the test chromosome (the evaluation's); the validation signal
    passes ``reference_stats("validation")["kmer3"]``.
    """
    freq = kmer_frequencies(as_tokens(sequences, None), 3)  # (64,)
    if reference is None:
        ref = reference_stats()["kmer3"]
    elif isinstance(reference, np.ndarray) and reference.ndim == 1:
        ref = reference
    else:
        ref = kmer_frequencies(as_tokens(reference, None), 3)
    return pearson(freq, ref)


def pred_activity_median(pred_activity: np.ndarray) -> float:
    """Median evaluation-oracle HepG2 log-odds. (N,) -> float"""
    return float(np.median(_nonempty(pred_activity, "pred_activity")))


def atac_acc(atac: np.ndarray) -> float:
    """Percentage (0-100) of sequences whose accessibility probability exceeds 0.5. (N,) -> float"""
    return float(100.0 * np.mean(_nonempty(atac, "atac") > 0.5))


def log_lik_median(log_lik: np.ndarray) -> float:
    """Median ELBO log-likelihood, nats per sequence. (N,) -> float"""
    return float(np.median(_nonempty(log_lik, "log_lik")))


def motif_enrichment(motif_count: np.ndarray, reference_mean: float | None = None) -> float:
    """log2((mean hits + 0.01) / (reference mean hits + 0.01)); default reference: real HepG2 test DHS. (N,) -> float"""
    ref = reference_stats()["motif_mean"] if reference_mean is None else float(reference_mean)
    mean = float(np.mean(_nonempty(motif_count, "motif_count")))
    return float(np.log2((mean + MOTIF_PSEUDOCOUNT) / (ref + MOTIF_PSEUDOCOUNT)))


def _nonempty(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError(f"{name}: no sequences to summarise")
    return values


@lru_cache(maxsize=2)
def reference_stats(split: str = "test") -> dict:
    """3-mer frequencies (64,) and mean liver-motif hits of the real HepG2-specific DHS of ``split``: "test"
    (chr1, the evaluation's reference) or "validation" (chr2, the validation signal's)."""
    from .data import HEPG2, load_dhs
    from .motifs import MotifScanner

    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    data = load_dhs()
    rows = data.split(split)
    rows = rows[data.cell_type[rows] == HEPG2]
    x = data.tokens[rows]
    return {
        "kmer3": kmer_frequencies(x, 3),
        "motif_mean": float(MotifScanner()(x).mean()),
        "num_sequences": len(rows),
    }


def reference_sequences(name: str, num_samples: int, seed: int) -> list[str]:
    """Real test-chromosome DHS for a reference row, ``num_samples`` drawn without replacement (seeded).

    ``real_hepg2_test``: HepG2-specific rows of chr1 (958); ``real_nonhepg2_test``: the others (3,607).
    """
    from .data import HEPG2, load_dhs

    data = load_dhs()
    test = data.split("test")
    if name == "real_hepg2_test":
        rows = test[data.cell_type[test] == HEPG2]
    elif name == "real_nonhepg2_test":
        rows = test[data.cell_type[test] != HEPG2]
    else:
        raise ValueError(f"name must be one of {REFERENCE_ROWS}, got {name!r}")
    if num_samples > len(rows):
        raise ValueError(f"num_samples: {name} has only {len(rows)} sequences, asked for {num_samples}")
    pick = np.random.default_rng(int(seed)).choice(rows, size=num_samples, replace=False)
    return [data.sequences[i] for i in pick]


class DNAScorer:
    """Holds the evaluation models and computes per-sequence scores and the metric table.

    Args:
        device: where the oracles and the generator run.
        generator: the pretrained generator for ``log_lik`` (a module, a name/path for
            :func:`sepo_ray.tasks.dna.models.load_denoiser`, default "pretrained"), or False to skip ``log_lik``.
        elbo_steps: time draws per sequence of the ELBO.
        batch_size: sequences per generator forward in the ELBO.
    """

    metric_labels = METRIC_LABELS
    metric_digits = {"atac_acc": 1, "log_lik_median": 1}
    paired_score = None
    score_metric = "pred_activity_median"  # what the frontier ranks by
    realism_metric = "kmer3_corr"  # its realism guard
    realism_min = 0.9  # DNA-like (pretrained ~0.96; reward hacking drives it towards 0.1)
    plot_score = "pred_activity"
    plot_label = "Pred-Activity (eval-oracle HepG2 log-odds)"

    def __init__(
        self,
        device: str | torch.device = "cpu",
        generator=None,
        elbo_steps: int = ELBO_STEPS,
        batch_size: int = 256,
    ):
        from .motifs import MotifScanner
        from .oracles import AccessibilityClassifier, EvalOracle

        if elbo_steps < 1:
            raise ValueError(f"elbo_steps must be >= 1, got {elbo_steps}")
        self.device = torch.device(device)
        self.eval_oracle = EvalOracle(device=self.device)
        self.accessibility = AccessibilityClassifier(device=self.device)
        self.motifs = MotifScanner(device=self.device)
        if generator is False:
            self.generator = None
        elif generator is None or isinstance(generator, str):
            from .models import load_denoiser

            self.generator = load_denoiser(generator or "pretrained", device=self.device)
        else:
            self.generator = generator
        self.elbo_steps = int(elbo_steps)
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def log_lik(self, x: Tensor, seed: int = 0) -> np.ndarray:
        """ELBO under the pretrained generator, nats per sequence: tokens (N, L) -> float64 (N,)."""
        from sepo_ray.diffusion import elbo

        if self.generator is None:
            return np.full(len(x), np.nan)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out = [
            elbo(
                self.generator, x[i : i + self.batch_size].to(self.device), self.elbo_steps, generator=gen
            ).cpu()
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(out).double().numpy() if out else np.zeros(0)

    def scores(self, sequences: Sequence[str] | Tensor, seed: int = 0) -> dict[str, np.ndarray]:
        """Per-sequence scores (keys :data:`SCORE_KEYS`), each float64 (N,). Validates the sequences."""
        x = as_tokens(sequences, SEQ_LEN)
        return {
            "pred_activity": self.eval_oracle(x),
            "atac": self.accessibility(x),
            "motif_count": self.motifs(x),
            "log_lik": self.log_lik(x, seed),
        }

    def metrics(
        self, sequences: Sequence[str] | Tensor, seed: int = 0, scores: dict[str, np.ndarray] | None = None
    ) -> dict[str, float]:
        """The metric table row (keys :data:`METRIC_KEYS`); pass ``scores`` to reuse per-sequence scores."""
        scores = self.scores(sequences, seed) if scores is None else scores
        return summarize(scores, sequences)

    def summarize(self, scores: dict[str, np.ndarray], sequences: Sequence[str] | Tensor) -> dict[str, float]:
        """Set-level metrics (keys :data:`METRIC_KEYS`) from per-sequence scores (see :func:`summarize`)."""
        return summarize(scores, sequences)


def summarize(scores: dict[str, np.ndarray], sequences: Sequence[str] | Tensor) -> dict[str, float]:
    """Set-level metrics (keys :data:`METRIC_KEYS`) from per-sequence scores and the sequences (for 3-mers)."""
    return {
        "pred_activity_median": pred_activity_median(scores["pred_activity"]),
        "atac_acc": atac_acc(scores["atac"]),
        "kmer3_corr": kmer3_corr(sequences),
        "log_lik_median": log_lik_median(scores["log_lik"]),
        "motif_enrichment": motif_enrichment(scores["motif_count"]),
    }


@lru_cache(maxsize=4)
def default_scorer(device: str = "cpu", elbo_steps: int = ELBO_STEPS) -> DNAScorer:
    """A cached :class:`DNAScorer` with the shipped models (the pretrained generator for ``log_lik``)."""
    return DNAScorer(device=device, elbo_steps=elbo_steps)


def dna_metrics(
    sequences: Sequence[str] | Tensor,
    seed: int = 0,
    device: str = "cpu",
    elbo_steps: int = ELBO_STEPS,
    scorer: DNAScorer | None = None,
) -> dict[str, float]:
    """All DNA metrics of a set of 200 bp sequences (strings or tokens (N, 200)) -> {key: float}.

    Keys: pred_activity_median, atac_acc (%), kmer3_corr, log_lik_median (nats / sequence), motif_enrichment
    (log2 vs real HepG2). ``seed`` fixes the ELBO's Monte Carlo draws. Raises ValueError for bad sequences.
    """
    scorer = scorer or default_scorer(str(device), int(elbo_steps))
    return scorer.metrics(sequences, seed)
