"""Noise schedule of the masked (absorbing) diffusion process.

alpha(t) is the probability that a token is still clean at time t in [0, 1]; sigma(t) = -log alpha(t) is the
total noise and dsigma(t) its time derivative (SEDD ``noise_lib.LogLinearNoise``, MDLM ``loglinear``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class LogLinearSchedule:
    """Log-linear schedule: alpha(t) = 1 - (1 - eps) t.

    sigma(t) = -log alpha(t) = -log(1 - (1 - eps) t),  dsigma(t) = (1 - eps) / alpha(t).
    eps keeps alpha(1) = eps > 0 so that sigma stays finite.
    """

    def __init__(self, eps: float = 1e-3):
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must lie in [0, 1), got {eps}")
        self.eps = float(eps)

    def alpha(self, t: float | Tensor) -> float | Tensor:
        """alpha(t) = 1 - (1 - eps) t; float in, float out; Tensor in, Tensor (same shape) out."""
        return 1.0 - (1.0 - self.eps) * t

    def __call__(self, t: float | Tensor) -> tuple[float | Tensor, float | Tensor]:
        """(sigma(t), dsigma(t)) = (-log alpha(t), (1 - eps) / alpha(t))."""
        alpha = self.alpha(t)
        if isinstance(alpha, Tensor):
            return -torch.log(alpha), (1.0 - self.eps) / alpha
        return -math.log(alpha), (1.0 - self.eps) / alpha

    def __repr__(self) -> str:
        return f"LogLinearSchedule(eps={self.eps})"
