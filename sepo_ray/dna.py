"""The embedded DNA task in one call: ``task = load_dna_task()``.

    from sepo_ray.dna import load_dna_task

    task = load_dna_task(device="cpu")
    x = sepo_ray.diffusion.sample(task.generator, 64, task.length, steps=32).x   # (64, 200) tokens
    reward = task.reward(x)                      # fine-tuning oracle, HepG2 log-odds, float64 (64,)
    heldout = task.heldout_reward(x)             # evaluation oracle (a different model family)
    table = task.metrics(task.decode(x))         # pred_activity_median, atac_acc, kmer3_corr, ...

Every oracle takes a list of 200 bp ACGT strings or a LongTensor (N, 200) of tokens A=0, C=1, G=2, T=3 and
returns one float per sequence; bad sequences raise ValueError naming the sequence index and the culprit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .data import ALPHABET, NUM_TOKENS, SEQ_LEN, decode, encode


@dataclass
class DNATask:
    """Models and utilities of the embedded DNA task.

    generator: pretrained MDLM denoiser (z (B, 200) in 0..4 -> logits (B, 200, 4)).
    reward: fine-tuning oracle (:class:`~sepo_ray.oracles.FTOracle`), HepG2 log-odds.
    heldout_reward: evaluation oracle (:class:`~sepo_ray.oracles.EvalOracle`), HepG2 log-odds.
    accessibility: :class:`~sepo_ray.oracles.AccessibilityClassifier`, P(real DHS-like).
    motifs: :class:`~sepo_ray.oracles.MotifScanner`, liver-TF motif hits.
    """

    generator: nn.Module
    reward: Callable[[Sequence[str] | Tensor], np.ndarray]
    heldout_reward: Callable[[Sequence[str] | Tensor], np.ndarray]
    accessibility: Callable[[Sequence[str] | Tensor], np.ndarray]
    motifs: Callable[[Sequence[str] | Tensor], np.ndarray]
    device: torch.device
    length: int = SEQ_LEN
    num_tokens: int = NUM_TOKENS
    alphabet: str = ALPHABET
    _scorer: object = field(default=None, repr=False)

    @staticmethod
    def encode(sequences: Sequence[str]) -> Tensor:
        """Strings -> LongTensor (N, 200); ValueError names a bad sequence."""
        return encode(sequences)

    @staticmethod
    def decode(x: Tensor) -> list[str]:
        """LongTensor (N, 200) -> strings."""
        return decode(x)

    def scorer(self, elbo_steps: int | None = None):
        """The :class:`~sepo_ray.metrics.DNAScorer` sharing this task's generator and device."""
        from .metrics import ELBO_STEPS, DNAScorer

        steps = ELBO_STEPS if elbo_steps is None else elbo_steps
        if self._scorer is None or self._scorer.elbo_steps != steps:
            self._scorer = DNAScorer(device=self.device, generator=self.generator, elbo_steps=steps)
        return self._scorer

    def metrics(
        self, sequences: Sequence[str] | Tensor, seed: int = 0, elbo_steps: int | None = None
    ) -> dict:
        """:func:`sepo_ray.metrics.dna_metrics` with this task's models (log-lik under ``generator``)."""
        return self.scorer(elbo_steps).metrics(sequences, seed)


def load_dna_task(
    device: str | torch.device = "cpu",
    generator: str | Path | nn.Module = "pretrained",
    batch_size: int = 1024,
) -> DNATask:
    """Load the shipped DNA generator and oracles onto ``device``.

    generator: "pretrained" (shipped), a path accepted by :func:`sepo_ray.models.load_denoiser`, or a module.
    """
    from .models import load_denoiser
    from .oracles import AccessibilityClassifier, EvalOracle, FTOracle, MotifScanner

    device = torch.device(device)
    model = generator if isinstance(generator, nn.Module) else load_denoiser(generator, device=device)
    return DNATask(
        generator=model,
        reward=FTOracle(device=device, batch_size=batch_size),
        heldout_reward=EvalOracle(device=device, batch_size=batch_size),
        accessibility=AccessibilityClassifier(device=device, batch_size=batch_size),
        motifs=MotifScanner(device=device),
        device=device,
    )
