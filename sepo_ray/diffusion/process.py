"""Forward masking process: each token is replaced by MASK independently w.p. 1 - alpha(t)."""

from __future__ import annotations

import torch
from torch import Tensor

from .schedule import LogLinearSchedule


class MaskingProcess:
    """Absorbing forward process q(z_t | x_0) = prod_l [alpha(t) 1{z_l = x_l} + (1 - alpha(t)) 1{z_l = MASK}].

    Tokens are 0..num_tokens-1, MASK = num_tokens.
    """

    def __init__(self, num_tokens: int, schedule: LogLinearSchedule | None = None):
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        self.num_tokens = int(num_tokens)
        self.mask_id = int(num_tokens)
        self.schedule = schedule if schedule is not None else LogLinearSchedule()

    def move_chance(self, t: Tensor) -> Tensor:
        """1 - alpha(t): probability that a clean token is masked at time t. (B,) -> (B,)"""
        return 1.0 - self.schedule.alpha(t)

    def q_sample(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw z_t ~ q(. | x0): x0 (B, L) long, t (B,) float in [0, 1] -> z (B, L) long."""
        if x0.dim() != 2:
            raise ValueError(f"x0 must have shape (B, L), got {tuple(x0.shape)}")
        t = torch.as_tensor(t, dtype=torch.float64, device=x0.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x0.shape[0])
        if t.shape[0] != x0.shape[0]:
            raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        move = self.move_chance(t)[:, None]  # (B, 1)
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)  # (B, L)
        return torch.where(u < move, torch.full_like(x0, self.mask_id), x0)  # (B, L)


def q_sample(
    x0: Tensor, t: Tensor, num_tokens: int, schedule: LogLinearSchedule | None = None, generator=None
) -> Tensor:
    """Functional form of ``MaskingProcess(num_tokens, schedule).q_sample(x0, t)``."""
    return MaskingProcess(num_tokens, schedule).q_sample(x0, t, generator=generator)
