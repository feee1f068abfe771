"""Score-entropy family: the reverse step (sample or score a transition), the T-step SEDD sampler and path
scoring (see the package docstring for the step law and the grid)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
from torch import Tensor

from ..sampler import Path, Sample
from ..transitions import StepResult
from .noise import (
    METHODS,
    LogLinearNoise,
    _call,
    _check_method,
    _check_times,
    _masked_law,
    _net_device,
    _net_dtype,
    _noise_pair,
    _sigma_vector,
    mask_id_of,
)

# ----------------------------------------------------------------------------------------------------------
# The reverse step
# ----------------------------------------------------------------------------------------------------------


def _gumbel_argmax(logp: Tensor, generator: torch.Generator | None) -> Tensor:
    """One categorical draw per (b, l) by the Gumbel-max trick: logp (B, L, V) -> (B, L) long."""
    u = torch.rand(logp.shape, generator=generator, device=logp.device, dtype=logp.dtype)  # (B, L, V)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(logp.dtype).tiny)))  # (B, L, V)
    return (logp + gumbel).argmax(dim=-1)  # (B, L)


def _check_prompt(prompt: Tensor, batch: int, length: int, mask_id: int) -> Tensor:
    """(P,) or (B, P) long tokens in 0..m-1 -> (B, P)."""
    prompt = torch.as_tensor(prompt)
    if prompt.dim() == 1:
        prompt = prompt.unsqueeze(0).expand(batch, -1)
    if prompt.dim() != 2 or prompt.shape[0] != batch or prompt.shape[1] > length:
        raise ValueError(
            f"prompt must have shape (P,) or ({batch}, P) with P <= {length}, got {tuple(prompt.shape)}"
        )
    if prompt.is_floating_point() or (prompt.numel() and not ((prompt >= 0) & (prompt < mask_id)).all()):
        raise ValueError(f"prompt must hold clean token ids in 0..{mask_id - 1}")
    return prompt


def _clamp_prompt(z: Tensor, prompt: Tensor | None) -> Tensor:
    """z with positions 0..P-1 set to the prompt (SEDD ``proj_fun``): (B, L) -> (B, L)."""
    if prompt is None or prompt.shape[1] == 0:
        return z
    z = z.clone()
    z[:, : prompt.shape[1]] = prompt.to(z.device)  # (B, L)
    return z


def step(
    net: Callable[[Tensor, Tensor], Tensor] | None,
    z: Tensor,
    t: float,
    s: float,
    noise=None,
    method: str = "analytic",
    z_next: Tensor | None = None,
    generator: torch.Generator | None = None,
    log_score: Tensor | None = None,
    prompt: Tensor | None = None,
) -> StepResult:
    """One reverse step t -> s < t: sample (z_next None) or score the recorded transition z -> z_next.

        log P(z_next | z) = sum_l log P_l(z_next_l | z)    (P_l: `transition_log_probs`; -inf if impossible)

    z (B, L) long (MASK = V - 1); log_score: optional precomputed net(z, sigma(t)), (B, L, V); prompt: (P,) or
    (B, P) tokens written into positions 0..P-1 of z before the net call (clean, so they never move).
    Returns StepResult(z_next (B, L), log_prob (B,)), differentiable w.r.t. the net through log_score.
    """
    noise = noise if noise is not None else LogLinearNoise()
    _check_method(method)
    _check_times(t, s)
    if z.dim() != 2:
        raise ValueError(f"z must have shape (B, L), got {tuple(z.shape)}")
    if log_score is None:
        if net is None:
            raise ValueError("net is required when log_score is not given")
        mask_id = mask_id_of(net)
        if prompt is not None:
            z = _clamp_prompt(z, _check_prompt(prompt, z.shape[0], z.shape[1], mask_id))
        sigma_t = _sigma_vector(_noise_pair(noise, t)[0], z.shape[0], z.device, _net_dtype(net), "sigma")
        log_score = _call(net, z, sigma_t)  # (B, L, V)
    elif prompt is not None:
        z = _clamp_prompt(z, _check_prompt(prompt, z.shape[0], z.shape[1], log_score.shape[-1] - 1))
    mask_id = log_score.shape[-1] - 1
    log_tok, log_stay = _masked_law(log_score, t, s, noise, method)  # (B, L, m), (B, L)
    masked = z == mask_id  # (B, L)
    if z_next is None:
        with torch.no_grad():  # leave MASK w.p. 1 - P(MASK), then v ~ P(v) / (1 - P(MASK)) = softmax(log_tok)
            u = torch.rand(z.shape, generator=generator, device=z.device, dtype=log_stay.dtype)  # (B, L)
            moves = masked & (u >= log_stay.detach().exp())  # (B, L)
            z_next = torch.where(moves, _gumbel_argmax(log_tok.detach(), generator), z)  # (B, L)
    elif z_next.shape != z.shape:
        raise ValueError(f"z_next must have shape {tuple(z.shape)}, got {tuple(z_next.shape)}")
    token = log_tok.gather(-1, z_next.clamp(0, mask_id - 1).unsqueeze(-1)).squeeze(-1)  # (B, L)
    revealed = masked & (z_next >= 0) & (z_next < mask_id)  # (B, L)
    possible = revealed | (masked & (z_next == mask_id)) | (~masked & (z_next == z))  # (B, L)
    kept = torch.where(
        masked, log_stay, torch.zeros_like(log_stay)
    )  # (B, L) stay masked / clean carries over
    per_pos = torch.where(revealed, token, kept)  # (B, L)
    per_pos = per_pos.masked_fill(~possible, -math.inf)  # (B, L)
    return StepResult(z_next, per_pos.sum(dim=-1))  # (B,)


def analytic_step(net, z, t, s, noise=None, z_next=None, generator=None, log_score=None, prompt=None):
    """`step` with method="analytic" (Tweedie tau-leaping: c = expm1(sigma(t) - sigma(s)))."""
    return step(net, z, t, s, noise, "analytic", z_next, generator, log_score, prompt)


def euler_step(net, z, t, s, noise=None, z_next=None, generator=None, log_score=None, prompt=None):
    """`step` with method="euler" (c = (t - s) dsigma(t))."""
    return step(net, z, t, s, noise, "euler", z_next, generator, log_score, prompt)


# ----------------------------------------------------------------------------------------------------------
# Sampling and path scoring
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample(
    net: Callable[[Tensor, Tensor], Tensor],
    num_samples: int,
    length: int,
    steps: int,
    noise=None,
    method: str = "analytic",
    prompt: Tensor | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    record_states_at: Tensor | None = None,
    record_path: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    device: torch.device | str | None = None,
) -> Sample:
    """Draw `num_samples` sequences with the T-step SEDD sampler (module docstring), prompts held fixed.

    Starts from z = (prompt, MASK, ..., MASK) (all MASK without prompt); step k = T..1 goes t_k -> t_{k-1};
    the last step leaves no MASK. prompt: (P,) or (N, P) long, clamped at every step (SEDD ``proj_fun``).
    record_states_at: (S,) step indices in 1..T -> Sample.states (N, S, L), z_{t_k} before step k.
    record_path: Sample.path = Path(states (N, T + 1, L), ops [(method, t_k, t_{k-1})]) for `score_path`.
    progress: True prints "sampling k/T" lines to stderr; a callable gets (done, total) after each step.
    Returns Sample(x (N, L), log_prob (N,) float64 = sum of the step log-probabilities, states, path).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    _check_method(method)
    noise = noise if noise is not None else LogLinearNoise()
    batch_size = num_samples if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _net_device(net)
    mask_id = mask_id_of(net)
    if prompt is not None:
        prompt = _check_prompt(prompt, num_samples, length, mask_id).to(device)  # (N, P)
    record = None
    if record_states_at is not None:
        record = torch.as_tensor(record_states_at, dtype=torch.long).reshape(-1).tolist()
        if any(not 1 <= k <= steps for k in record):
            raise ValueError(f"record_states_at must hold step indices in 1..{steps}, got {record}")
    report = progress if callable(progress) else None
    total = steps * -(-num_samples // batch_size)
    ops = [(method, k / steps, (k - 1) / steps) for k in range(steps, 0, -1)]
    done = 0
    xs, log_probs, states, paths = [], [], [], []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        p = prompt[start : start + n] if prompt is not None else None  # (n, P)
        z = _clamp_prompt(torch.full((n, length), mask_id, dtype=torch.long, device=device), p)  # (n, L)
        log_prob = torch.zeros(n, dtype=torch.float64, device=device)  # (n,)
        before, visited = {}, [z]
        for _, t, s in ops:
            k = round(t * steps)
            if record is not None and k in record:
                before[k] = z
            res = step(net, z, t, s, noise, method, generator=generator)  # z holds the prompt
            z, log_prob = _clamp_prompt(res.z_next, p), log_prob + res.log_prob.double()  # (n, L), (n,)
            if record_path:
                visited.append(z)
            done += 1
            if report is not None:
                report(done, total)
            elif progress:
                print(f"sampling {done}/{total}", file=sys.stderr, flush=True)
        xs.append(z)
        log_probs.append(log_prob)
        if record is not None:
            states.append(torch.stack([before[k] for k in record], dim=1))  # (n, S, L)
        if record_path:
            paths.append(torch.stack(visited, dim=1))  # (n, T + 1, L)
    return Sample(
        x=torch.cat(xs),  # (N, L)
        log_prob=torch.cat(log_probs),  # (N,)
        states=torch.cat(states) if record is not None else None,  # (N, S, L)
        path=Path(torch.cat(paths), ops) if record_path else None,
    )


def score_path(net, path: Path, noise=None, reduce: bool = True) -> Tensor:
    """Re-score a recorded path with gradient: sum_j log P_theta(states[:, j+1] | states[:, j]).

    path.states (N, P + 1, L), path.ops [(method, t, s)] as `sample` records -> (N,) (reduce) or (N, P).
    The prompt needs no argument: it sits in every recorded state and clean tokens never move.
    """
    states = path.states
    if states.dim() != 3 or states.shape[1] != len(path.ops) + 1:
        raise ValueError(f"path.states must have shape (N, len(ops) + 1 = {len(path.ops) + 1}, L)")
    terms = []
    for j, (kind, t, s) in enumerate(path.ops):
        if kind not in METHODS:
            raise ValueError(f"path.ops methods must be one of {METHODS}, got {kind!r}")
        terms.append(step(net, states[:, j], t, s, noise, kind, z_next=states[:, j + 1]).log_prob)  # (N,)
    per_step = torch.stack(terms, dim=1)  # (N, P)
    return per_step.sum(dim=1) if reduce else per_step
