"""Hamming-1 neighbours of a sequence and uniform subsampling of their positions (DESIGN "Scores").

A neighbour y of x is x with position l set to a token v != x_l; neighbours are indexed (k, v) with l =
positions[b, k], giving tensors of shape (B, K, m) whose entries at v = x_l are excluded by `neighbour_mask`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_positions(
    batch: int,
    length: int,
    num_positions: int | None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, float]:
    """K distinct positions per sequence, uniformly without replacement, and the weight L / K.

    sum_{l in N(x)} g(l) = E[(L / K) sum_{k} g(positions[k])], so the weight keeps the restricted Hamming-1 sum
    unbiased. num_positions None (or = L) -> all positions in order, weight 1.
    Returns positions (batch, K) long and weight float.
    """
    if batch < 1 or length < 1:
        raise ValueError(f"batch and length must be >= 1, got {batch}, {length}")
    if num_positions is None or num_positions == length:
        return torch.arange(length, device=device).expand(batch, length).clone(), 1.0  # (B, L)
    if not 1 <= num_positions <= length:
        raise ValueError(
            f"num_positions must lie in 1..length={length} (or None for all), got {num_positions}"
        )
    keys = torch.rand((batch, length), generator=generator, device=device)  # (B, L)
    positions = keys.argsort(dim=1)[:, :num_positions]  # (B, K) distinct, uniform subset
    return positions, length / num_positions


def _check_positions(x: Tensor, positions: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, L), got {tuple(x.shape)}")
    if positions.dim() != 2 or positions.shape[0] != x.shape[0]:
        raise ValueError(f"positions must have shape ({x.shape[0]}, K), got {tuple(positions.shape)}")
    if positions.numel() and (positions.min() < 0 or positions.max() >= x.shape[1]):
        raise ValueError(f"positions must lie in 0..{x.shape[1] - 1}")


def neighbour_mask(x: Tensor, positions: Tensor, num_tokens: int = 4) -> Tensor:
    """True where (k, v) is a genuine neighbour, i.e. v != x[b, positions[b, k]]: (B, L), (B, K) -> (B, K, m) bool.

    num_tokens: m (default 4, the DNA vocabulary).
    """
    _check_positions(x, positions)
    current = x.gather(1, positions)  # (B, K)
    tokens = torch.arange(num_tokens, device=x.device)  # (m,)
    return tokens.view(1, 1, -1) != current.unsqueeze(-1)  # (B, K, m)


def neighbours(x: Tensor, positions: Tensor, num_tokens: int) -> Tensor:
    """Materialise y[b, k, v] = x[b] with position positions[b, k] set to v: (B, L), (B, K) -> (B, K, m, L).

    The entries v = x_l equal x itself (excluded by `neighbour_mask`).
    """
    _check_positions(x, positions)
    batch, length = x.shape
    k = positions.shape[1]
    y = x.view(batch, 1, 1, length).expand(batch, k, num_tokens, length).clone()  # (B, K, m, L)
    index = positions.view(batch, k, 1, 1).expand(batch, k, num_tokens, 1)  # (B, K, m, 1)
    tokens = torch.arange(num_tokens, device=x.device).view(1, 1, -1, 1).expand(batch, k, num_tokens, 1)
    return y.scatter(-1, index, tokens)  # (B, K, m, L)


def other_tokens(x: Tensor, positions: Tensor, num_tokens: int) -> Tensor:
    """The m - 1 tokens v != x_l at each selected position, v_j = (x_l + j) mod m, j = 1..m-1: -> (B, K, m - 1)."""
    _check_positions(x, positions)
    current = x.gather(1, positions)  # (B, K)
    shifts = torch.arange(1, num_tokens, device=x.device)  # (m - 1,)
    return (current.unsqueeze(-1) + shifts) % num_tokens  # (B, K, m - 1)
