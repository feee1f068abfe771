"""Likelihood bounds of the masked diffusion model: MDLM training loss and the T-step sampler's ELBO."""

from __future__ import annotations

import torch
from torch import Tensor

from .process import MaskingProcess
from .schedule import LogLinearSchedule
from .transitions import _log_softmax, _mask_id, unmask_probability


def _draw_times(n: int, antithetic: bool, generator, device) -> Tensor:
    """t in (0, 1]: i.i.d. uniform, or low-discrepancy t_i = 1 - ((u + i/n) mod 1) with one shared u. -> (n,)"""
    if antithetic:
        u = torch.rand((), generator=generator, device=device, dtype=torch.float64)
        frac = torch.remainder(u + torch.arange(n, device=device, dtype=torch.float64) / n, 1.0)  # (n,)
    else:
        frac = torch.rand(n, generator=generator, device=device, dtype=torch.float64)  # (n,)
    return 1.0 - frac  # (n,) in (0, 1]


def mdlm_loss(
    model,
    x0: Tensor,
    process: MaskingProcess,
    generator: torch.Generator | None = None,
    antithetic: bool = False,
) -> Tensor:
    """Continuous-time MDLM negative ELBO, one random time per sequence (pretraining loss), nats.

        NELBO(x0) = E_{t ~ U(0,1]} E_{z ~ q_t(.|x0)} [ dsigma(t) / expm1(sigma(t)) * sum_{l: z_l = M} -log p_theta(x0_l | z) ]

    (= -alpha'(t) / (1 - alpha(t)) weight; 1/t for the log-linear schedule). x0 (B, L) long -> (B,) float,
    differentiable. antithetic=True spreads the B times evenly over (0, 1] (low-discrepancy, MDLM).
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape (B, L), got {tuple(x0.shape)}")
    t = _draw_times(x0.shape[0], antithetic, generator, x0.device)  # (B,)
    z = process.q_sample(x0, t, generator=generator)  # (B, L)
    sigma, dsigma = process.schedule(t)
    weight = dsigma / torch.expm1(sigma)  # (B,)
    logp = _log_softmax(model(z))  # (B, L, m)
    nll = -logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # (B, L)
    masked = z == process.mask_id  # (B, L)
    return weight.to(logp.dtype) * (nll * masked).sum(dim=-1)  # (B,)


def elbo(
    model,
    x0: Tensor,
    steps: int,
    schedule: LogLinearSchedule | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unbiased estimate of the T-step sampler's ELBO, log pi_theta(x0) >= ELBO_T(x0), nats per sequence.

    Variational path: the sampler's own unmasking law started from all-MASK at t = 1, revealing x0 instead of
    model draws. Its marginal at t_k masks each position independently w.p. (1 - alpha(t_k)) / (1 - alpha(1))
    and, per masked position, log [P_theta(reveal x0_l) / q(reveal x0_l)] = log p_theta(x0_l | z), so

        ELBO_T(x0) = sum_{k=1}^{T} E_{z ~ q_{t_k}(.|x0)} [ p_k * sum_{l: z_l = M} log p_theta(x0_l | z) ],
        p_k = (alpha(t_{k-1}) - alpha(t_k)) / (1 - alpha(t_k)),

    a bound on the exact law of `sample(..., steps=T)`; one Monte Carlo draw of z per step, T in all (as
    DRAKES); as T -> infinity it is the continuous MDLM ELBO. Divide by L ln 2 for bits per token.
    x0 (N, L) long -> (N,) float, differentiable.
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape (N, L), got {tuple(x0.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    schedule = schedule if schedule is not None else LogLinearSchedule()
    mask_id = _mask_id(model)
    a_one = float(schedule.alpha(1.0))
    total = 0.0
    for k in range(steps, 0, -1):
        t, s = k / steps, (k - 1) / steps
        move = (1.0 - float(schedule.alpha(t))) / (1.0 - a_one)  # P(masked at t_k)
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)  # (N, L)
        z = torch.where(u < move, torch.full_like(x0, mask_id), x0)  # (N, L)
        logp = _log_softmax(model(z))  # (N, L, m)
        ll = logp.gather(-1, x0.unsqueeze(-1)).squeeze(-1)  # (N, L)
        total = total + unmask_probability(schedule, t, s) * (ll * (z == mask_id)).sum(dim=-1)  # (N,)
    return total


def elbo_states(
    x0: Tensor,
    steps: int,
    num_states: int,
    mask_id: int,
    schedule: LogLinearSchedule | None = None,
    generator: torch.Generator | None = None,
    free: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """S noised states of each x0 from the T-step ELBO's variational path (see :func:`elbo`), for a Monte Carlo
    estimate of ELBO_T(x0) and of its gradient with S model calls instead of T.

    For each sequence S sampler steps k are drawn uniformly from 1..T (independently, with replacement) and
    z ~ q_{t_k}(.|x0) masks each free position independently w.p. (1 - alpha(t_k)) / (1 - alpha(1)); prompt
    positions (``free`` False) stay clean. With :func:`elbo_terms`,

        ELBO_T(x0) = E[ (T / S) sum_s p_{k_s} sum_{l: z_{s,l} = M} log p_theta(x0_l | z_s) ]     (unbiased)

    x0 (N, L) long, free (N, L) bool or None -> states (N, S, L) long, step weights (T / S) p_{k_s} (N, S)
    float64. Random numbers: the steps, then the masks.
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape (N, L), got {tuple(x0.shape)}")
    if steps < 1 or num_states < 1:
        raise ValueError(f"steps and num_states must be >= 1, got {steps}, {num_states}")
    schedule = schedule if schedule is not None else LogLinearSchedule()
    n, length = x0.shape
    device = x0.device
    k = torch.randint(1, steps + 1, (n, num_states), generator=generator, device=device)  # (N, S)
    a_one = float(schedule.alpha(1.0))
    move = torch.tensor(
        [0.0] + [(1.0 - float(schedule.alpha(j / steps))) / (1.0 - a_one) for j in range(1, steps + 1)],
        dtype=torch.float64,
        device=device,
    )  # (T + 1,) P(masked at t_k)
    p_unmask = torch.tensor(
        [0.0] + [unmask_probability(schedule, j / steps, (j - 1) / steps) for j in range(1, steps + 1)],
        dtype=torch.float64,
        device=device,
    )  # (T + 1,)
    u = torch.rand((n, num_states, length), generator=generator, device=device, dtype=torch.float64)
    masked = u < move[k].unsqueeze(-1)  # (N, S, L)
    if free is not None:
        masked = masked & free.bool().unsqueeze(1)
    states = torch.where(
        masked, torch.full_like(masked, mask_id, dtype=x0.dtype), x0.unsqueeze(1)
    )  # (N, S, L)
    return states, p_unmask[k] * (steps / num_states)  # (N, S, L), (N, S)


def elbo_token_log_probs(model, x0: Tensor, states: Tensor, mask_id: int | None = None) -> Tensor:
    """log p_theta(x0_l | z_s) at every masked position of the states, 0 elsewhere (one model call per state).

    x0 (N, L), states (N, S, L) -> (N, S, L) float, differentiable.
    """
    n, num_states, length = states.shape
    mask_id = _mask_id(model) if mask_id is None else mask_id
    logp = _log_softmax(model(states.reshape(n * num_states, length)))  # (N S, L, m)
    target = x0.unsqueeze(1).expand(n, num_states, length).reshape(n * num_states, length, 1)
    ll = logp.gather(-1, target).reshape(n, num_states, length)  # (N, S, L)
    return torch.where(states == mask_id, ll, torch.zeros_like(ll))  # (N, S, L)
