"""A 16-token toy task for smoke tests and demos: no artifact, a seeded random generator, an easy reward."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import Task


def fraction_a(sequences: Sequence[str]) -> np.ndarray:
    """Toy reward: the fraction of 'A' in each sequence (one float per sequence)."""
    return np.array([s.count("A") / max(1, len(s)) for s in sequences], dtype=np.float64)


class ToyTask(Task):
    """L = 16 over A, C, G, T; a small randomly initialised (seeded) CNN denoiser; reward = fraction of A."""

    name = "toy"
    description = "16 tokens over ACGT, reward = fraction of A (smoke tests, no artifact)"
    length = 16
    num_tokens = 4
    alphabet = "ACGT"
    default_reward = "sepo_ray.tasks.toy:fraction_a"

    def build_denoiser(
        self, generator: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> nn.Module:
        if generator is not None:
            return super().build_denoiser(generator, device)
        from sepo_ray.models import ConvDenoiser

        g = torch.Generator().manual_seed(0)
        model = ConvDenoiser(hidden_dim=16, num_cnn_stacks=1, num_tokens=self.num_tokens)
        with torch.no_grad():
            for p in model.parameters():  # seeded init, independent of the global RNG
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        return model.to(device).eval()
