"""Hamming-1 neighbours of a sequence, uniform subsampling of their positions and of their tokens.

A neighbour y of x is x with position l set to a token v != x_l; neighbours are indexed (k, v) with l =
positions[b, k], giving tensors of shape (B, K, m) whose entries at v = x_l are excluded by `neighbour_mask`.

Token proposals (for large vocabularies; DESIGN "Theorem 3.1 / 3.2": "a uniform subsample reweighted to stay
unbiased for the restricted sum"). At each selected position the loss sums over the m - 1 tokens v != x_l;
`propose_tokens` instead draws a subset S of J of them, uniformly among the C(m-1, J) subsets, independently
per (sequence, position), and reweights by (m - 1) / J:

    sum_{v != x_l} g(v) = E_S[((m - 1) / J) sum_{v in S} g(v)]

Unbiased because, by symmetry, each v != x_l lies in S with probability C(m-2, J-1) / C(m-1, J) = J / (m - 1),
so E_S[sum_{v in S} g(v)] = sum_{v != x_l} P(v in S) g(v) = (J / (m - 1)) sum_{v != x_l} g(v). It holds for
any g that does not depend on S given v -- in particular the SEPO summand w_{x,y} log s_theta(x)_y, whose SNIS
weight pi_hat(y) is drawn per proposed neighbour with its own sites -- so the loss, and by linearity its
gradient, is unbiased for the restricted (Hamming-1) sum. With position subsampling too the two weights
multiply: `sepo_loss(..., mask=proposal_mask(tokens, m), position_weight=(L / K) * (m - 1) / J)`.
J = m - 1 (or None) is today's estimator exactly: `other_tokens`, weight 1, no random numbers drawn.

Where the saving is. With the "conditional" score one masked forward of x^(l) gives log p_theta(. | x^(l)) at
l for all m tokens at once, so the log-score tensor (B, K, m) costs B K forwards whatever J is: proposing
tokens saves nothing there (and the unproposed entries are simply masked out). The saving is in SNIS
(`snis.py`): pi_hat(y) needs M masked forwards per neighbour y, B K (m - 1) M in all, and B K J M with
proposals -- for m = 50,257 (GPT-2) and J = 16 a 3,141-fold saving.

Memory for large m. Tensors indexed by (B, K, m) -- the log scores, coefficients, ratio and the masks -- hold
B K m entries (B K = 1,024, m = 50,257: 206 MB in float32), and drawing the proposals takes B K (m - 1)
float64 keys transiently: the same order, so J does not change peak memory on this side. The model's logits
are the larger cost: each forward yields (L, m) log-probabilities of which one row (the site) is kept, so
chunk with `batch_size` (scores.py keeps only that row per chunk). In SNIS the per-sample site
log-probabilities and the Gumbel noise that draws z_{l'} are (B, K, J, M, m): keep B K J M small.
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
    free: Tensor | None = None,
) -> tuple[Tensor, float | Tensor]:
    """K distinct positions per sequence, uniformly without replacement, and the weight L / K.

    sum_{l in N(x)} g(l) = E[(L / K) sum_{k} g(positions[k])], so the weight keeps the restricted Hamming-1 sum
    unbiased. num_positions None (or = L) -> all positions in order, weight 1.
    free: optional (batch, L) bool, the positions that may change (False at prompt tokens); then the K positions
    are drawn among the C_b free ones of each row and the weight is the (batch,) float64 tensor C_b / K
    (num_positions None = K = min_b C_b). Returns positions (batch, K) long and the weight.
    """
    if batch < 1 or length < 1:
        raise ValueError(f"batch and length must be >= 1, got {batch}, {length}")
    if free is not None:
        if free.shape != (batch, length):
            raise ValueError(f"free must have shape ({batch}, {length}), got {tuple(free.shape)}")
        count = free.sum(dim=1)  # (B,)
        k = int(count.min()) if num_positions is None else int(num_positions)
        if not 1 <= k <= int(count.min()):
            raise ValueError(
                f"num_positions must lie in 1..{int(count.min())} (the fewest free positions in a row), got {k}"
            )
        keys = torch.rand((batch, length), generator=generator, device=free.device)  # (B, L)
        keys = torch.where(free, keys, torch.full_like(keys, 2.0))  # prompt positions sort last
        positions = keys.argsort(dim=1)[:, :k]  # (B, K) distinct, uniform among the free positions
        return positions, count.double() / k  # (B, K), (B,)
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


def neighbour_mask(x: Tensor, positions: Tensor, num_tokens: int) -> Tensor:
    """True where (k, v) is a genuine neighbour, i.e. v != x[b, positions[b, k]]: (B, L), (B, K) -> (B, K, m) bool.

    num_tokens: m, the clean vocabulary size.
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


def propose_tokens(
    x: Tensor,
    positions: Tensor,
    num_tokens: int,
    num_proposals: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, float]:
    """J proposed tokens v != x_l per selected position and the weight (m - 1) / J (module docstring).

    num_proposals None (or = m - 1): all m - 1 other tokens, exactly `other_tokens` (shift order), weight 1,
    no random numbers drawn. 1 <= J < m - 1: a uniform J-subset of the m - 1 other tokens, without
    replacement, independently per (b, k): the J largest of m - 1 i.i.d. U(0, 1) float64 keys (a uniform
    subset by exchangeability; ties have probability ~ m^2 / 2^53), returned as v = (x_l + j) mod m with the
    shifts j in 1..m-1 sorted, the order `other_tokens` uses. x (B, L) long, positions (B, K) long ->
    tokens (B, K, J) long, weight float.
    """
    _check_positions(x, positions)
    others = num_tokens - 1
    if num_proposals is None or num_proposals == others:
        return other_tokens(x, positions, num_tokens), 1.0  # (B, K, m - 1)
    if not 1 <= num_proposals <= others:
        raise ValueError(
            f"num_proposals must lie in 1..num_tokens-1={others} (or None for all), got {num_proposals}"
        )
    batch, k = positions.shape
    keys = torch.rand((batch, k, others), generator=generator, device=x.device, dtype=torch.float64)
    shifts = keys.topk(num_proposals, dim=-1).indices.sort(dim=-1).values + 1  # (B, K, J) in 1..m-1, distinct
    current = x.gather(1, positions)  # (B, K)
    return (current.unsqueeze(-1) + shifts) % num_tokens, others / num_proposals  # (B, K, J)


def proposal_mask(tokens: Tensor, num_tokens: int) -> Tensor:
    """True at the proposed tokens: tokens (B, K, J) long -> (B, K, m) bool.

    With tokens = `other_tokens(x, positions, m)` (J = m - 1) this is `neighbour_mask(x, positions, m)`.
    """
    if tokens.dim() != 3:
        raise ValueError(f"tokens must have shape (B, K, J), got {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= num_tokens):
        raise ValueError(f"tokens must lie in 0..num_tokens-1={num_tokens - 1}")
    mask = torch.zeros(tokens.shape[:2] + (num_tokens,), dtype=torch.bool, device=tokens.device)  # (B, K, m)
    return mask.scatter(-1, tokens, True)  # (B, K, m)
