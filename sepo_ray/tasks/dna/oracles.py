"""DNA reward oracles loaded from the shipped artifacts. One interface for all of them:

    oracle(sequences: list[str] | LongTensor (N, 200)) -> np.ndarray float64 (N,)

batched on the oracle's device. Strings must be 200 upper-case A/C/G/T; anything else raises ValueError naming
the offending sequence index and character (or length).

- :class:`FTOracle`: HepG2 log-odds of the fine-tuning oracle (dilated CNN, chromosome half A) — the reward;
- :class:`EvalOracle`: HepG2 log-odds of the evaluation oracle (k-mer MLP, chromosome half B) — Pred-Activity;
- :class:`AccessibilityClassifier`: P(real DHS | x) against dinucleotide-shuffled DHS — ATAC-Acc;
- :class:`AccessibleFTOracle`: the fine-tuning oracle's HepG2 log-odds + ``weight`` * log P(real DHS | x) under
  the accessibility guard (k-mer MLP, chromosome half A; never the ATAC-Acc classifier) — a reward that pays for
  activity only in sequences that still look accessible.

HepG2 log-odds = log p(HepG2 | x) - log(1 - p(HepG2 | x)) under the classifier's 4-way softmax over
(GM12878, hESCT0, K562, HepG2) = logit_HepG2 - logsumexp(other logits), with logits averaged over both strands.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data.dhs import HEPG2
from .data.sequences import SEQ_LEN, as_tokens, reverse_complement

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"


#: the evaluation's ATAC classifier: CNN on chromosome half B, disjoint in rows and model family from the
#: accessibility guard a reward may use (k-mer MLP, half A); "accessibility" (CNN, both halves) was the first one
ATAC_ARTIFACT = "atac_v2"


def artifact_path(name: str) -> Path:
    """Path of a shipped DNA artifact (``generator``, ``ft_oracle``, ``eval_oracle``, ``accessibility``,
    ``ft_accessibility``)."""
    path = ARTIFACT_DIR / f"{name}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; rebuild it with: python -m sepo_ray.pretrain dna --only {name}"
        )
    return path


class SequenceOracle:
    """Base class: validation, batching and device handling; subclasses implement :meth:`score_tokens`."""

    length: int = SEQ_LEN

    def __init__(self, device: str | torch.device | None = None, batch_size: int = 1024):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.batch_size = int(batch_size)

    def score_tokens(self, x: Tensor) -> Tensor:
        """Scores of a validated batch of tokens on ``self.device``: x (B, L) long -> (B,) float."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, sequences: Sequence[str] | Tensor | np.ndarray) -> np.ndarray:
        """Score sequences (strings or tokens (N, L)) -> float64 (N,)."""
        x = as_tokens(sequences, self.length)  # (N, L), validated
        out = [
            self.score_tokens(x[i : i + self.batch_size].to(self.device)).double().cpu()
            for i in range(0, len(x), self.batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float64)


class ClassifierOracle(SequenceOracle):
    """A classifier artifact, strand-averaged; ``output`` is "hepg2_log_odds" (4 classes), "probability" or
    "logit" (1 output)."""

    def __init__(
        self,
        path: str | Path,
        output: str = "hepg2_log_odds",
        device: str | torch.device | None = None,
        batch_size: int = 1024,
    ):
        super().__init__(device, batch_size)
        from .models import load_model

        if output not in ("hepg2_log_odds", "probability", "logit"):
            raise ValueError(f"output must be 'hepg2_log_odds', 'probability' or 'logit', got {output!r}")
        self.path = Path(path)
        self.output = output
        self.model = load_model(self.path, self.device)
        self.model.requires_grad_(False)

    def logits(self, x: Tensor) -> Tensor:
        """Strand-averaged logits: x (B, L) -> (B, C)."""
        return 0.5 * (self.model(x) + self.model(reverse_complement(x)))  # (B, C)

    def score_tokens(self, x: Tensor) -> Tensor:
        logits = self.logits(x)  # (B, C)
        if self.output == "probability":
            return torch.sigmoid(logits[:, 0])  # (B,)
        if self.output == "logit":
            return logits[:, 0]  # (B,)
        others = torch.cat([logits[:, :HEPG2], logits[:, HEPG2 + 1 :]], dim=1)  # (B, 3)
        return logits[:, HEPG2] - torch.logsumexp(others, dim=1)  # (B,) HepG2 log-odds

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, output={self.output!r}, device={str(self.device)!r})"
        )


class FTOracle(ClassifierOracle):
    """Fine-tuning oracle: HepG2 log-odds of the dilated CNN trained on chromosome half A (the reward)."""

    def __init__(self, path: str | Path | None = None, device=None, batch_size: int = 1024):
        super().__init__(path or artifact_path("ft_oracle"), "hepg2_log_odds", device, batch_size)


class EvalOracle(ClassifierOracle):
    """Evaluation oracle: HepG2 log-odds of the k-mer MLP trained on chromosome half B (Pred-Activity)."""

    def __init__(self, path: str | Path | None = None, device=None, batch_size: int = 1024):
        super().__init__(path or artifact_path("eval_oracle"), "hepg2_log_odds", device, batch_size)


class AccessibilityClassifier(ClassifierOracle):
    """P(real DHS | x) of the CNN trained against dinucleotide-shuffled DHS (ATAC-Acc: fraction > 0.5)."""

    def __init__(self, path: str | Path | None = None, device=None, batch_size: int = 1024):
        super().__init__(path or artifact_path(ATAC_ARTIFACT), "probability", device, batch_size)


class AccessibleFTOracle(SequenceOracle):
    """HepG2 log-odds (fine-tuning oracle) + ``weight`` * log P(real DHS | x) under the accessibility guard.

    log P = log sigmoid(guard logit) is about the logit for sequences the guard judges shuffled-like and about 0
    for those it judges DHS-like, so the term penalises losing accessibility without paying for more of it. The
    guard is :class:`~sepo_ray.tasks.dna.classifiers.KmerMLPClassifier` trained on chromosome half A (artifact
    ``ft_accessibility``); the evaluation's ATAC-Acc classifier is a dilated CNN and stays unseen by training.
    """

    def __init__(
        self,
        weight: float = 1.0,
        ft_path: str | Path | None = None,
        guard_path: str | Path | None = None,
        device=None,
        batch_size: int = 1024,
    ):
        super().__init__(device, batch_size)
        try:
            w = float(weight)
        except (TypeError, ValueError):
            w = float("nan")
        if not (np.isfinite(w) and w >= 0.0):
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        self.weight = w
        self.ft = FTOracle(ft_path, device, batch_size)
        self.guard = ClassifierOracle(
            guard_path or artifact_path("ft_accessibility"), "logit", device, batch_size
        )

    def score_tokens(self, x: Tensor) -> Tensor:
        guard_logit = self.guard.score_tokens(x)  # (B,)
        return self.ft.score_tokens(x) + self.weight * torch.nn.functional.logsigmoid(guard_logit)  # (B,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight}, device={str(self.device)!r})"
