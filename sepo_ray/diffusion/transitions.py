"""One transition of the masked diffusion model's reverse sampler: drawn, or scored with gradient.

Predictor (DESIGN "Sampler"): from time t to s < t each still-masked position unmasks with probability

    p(t, s) = (alpha(s) - alpha(t)) / (1 - alpha(t))        (p = 1 when s = 0)

to a token drawn from softmax(f_theta(z)) at that position; clean positions carry over (MDLM "subs"). The
transition law factorises over positions, so for a recorded z -> z'

    log P(z' | z) = sum_{l: z_l = M, z'_l != M} [log p + log softmax(f(z))_{l, z'_l}]
                  + sum_{l: z_l = M, z'_l = M} log(1 - p),

and -inf for any impossible move (a clean token that changes).

Corrector (paper Sec. 3.3, Campbell et al. 2022 predictor-corrector with Q + Q_bar): at time s, re-mask every
clean position independently with the forward probability over an increment dt, rho = 1 - alpha(s+dt)/alpha(s),
then take one predictor step from s + dt back to s. With a perfect denoiser the marginal at s is invariant.
Both halves are recorded and scorable. At s = 0 the reverse half unmasks everything.

`step` samples when `z_next` is None and scores the recorded transition otherwise (with gradient w.r.t. the
model), so rollouts and training share one code path (DDPO ``ddim_step_with_logprob``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .schedule import LogLinearSchedule


class StepResult(NamedTuple):
    z_next: Tensor  # (B, L) long
    log_prob: Tensor  # (B,) float, log P(z_next | z)


class CorrectorResult(NamedTuple):
    z_mid: Tensor  # (B, L) long, state after re-masking (time s + dt)
    z_next: Tensor  # (B, L) long, state after the reverse step back to s
    log_prob: Tensor  # (B,) float, log q(z_mid | z) + log P_theta(z_next | z_mid)
    halves: tuple[Tensor, Tensor] | None = None  # (log q(z_mid | z), log P_theta(z_next | z_mid)), each (B,)


def unmask_probability(schedule: LogLinearSchedule, t: float, s: float) -> float:
    """p(t, s) = (alpha(s) - alpha(t)) / (1 - alpha(t)) for 0 <= s < t <= 1; exactly 1 when s = 0."""
    if not 0.0 <= s < t <= 1.0:
        raise ValueError(f"times must satisfy 0 <= s < t <= 1, got t={t}, s={s}")
    if s == 0.0:
        return 1.0
    a_t, a_s = float(schedule.alpha(t)), float(schedule.alpha(s))
    return min(1.0, (a_s - a_t) / (1.0 - a_t))


def remask_probability(schedule: LogLinearSchedule, s: float, u: float) -> float:
    """rho(s, u) = 1 - alpha(u) / alpha(s): forward probability that a clean token at s is masked at u > s."""
    if not 0.0 <= s < u <= 1.0:
        raise ValueError(f"times must satisfy 0 <= s < u <= 1, got s={s}, u={u}")
    return 1.0 - float(schedule.alpha(u)) / float(schedule.alpha(s))


def _log_softmax(logits: Tensor) -> Tensor:
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return torch.log_softmax(logits.to(dtype), dim=-1)  # (B, L, m)


def _gumbel_argmax(logp: Tensor, generator: torch.Generator | None) -> Tensor:
    """Categorical draw per (b, l) by the Gumbel-max trick: logp (B, L, m) -> (B, L) long."""
    u = torch.rand(logp.shape, generator=generator, device=logp.device, dtype=logp.dtype)  # (B, L, m)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(logp.dtype).tiny)))  # (B, L, m)
    return (logp + gumbel).argmax(dim=-1)  # (B, L)


def step(
    model: Callable[[Tensor], Tensor] | None,
    z: Tensor,
    t: float,
    s: float,
    schedule: LogLinearSchedule,
    z_next: Tensor | None = None,
    generator: torch.Generator | None = None,
    logits: Tensor | None = None,
) -> StepResult:
    """One reverse step from t to s < t: sample (z_next None) or score the recorded z -> z_next.

    z: (B, L) long in 0..m (MASK = m); logits: optional precomputed model(z), (B, L, m).
    Returns StepResult(z_next (B, L), log_prob (B,)); log_prob = log P_theta(z_next | z) (formula in the module
    docstring), differentiable w.r.t. the model parameters through the logits.
    """
    if logits is None:
        if model is None:
            raise ValueError("model is required when logits is not given")
        logits = model(z)  # (B, L, m)
    if logits.shape[:2] != z.shape:
        raise ValueError(f"logits must have shape {tuple(z.shape)} + (m,), got {tuple(logits.shape)}")
    num_tokens = logits.shape[-1]
    mask_id = num_tokens
    p = unmask_probability(schedule, t, s)
    logp = _log_softmax(logits)  # (B, L, m)
    masked = z == mask_id  # (B, L)
    if z_next is None:
        with torch.no_grad():
            u = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)  # (B, L)
            unmask = masked & (u < p)  # (B, L)
            tokens = _gumbel_argmax(logp.detach(), generator)  # (B, L)
            z_next = torch.where(unmask, tokens, z)  # (B, L)
    elif z_next.shape != z.shape:
        raise ValueError(f"z_next must have shape {tuple(z.shape)}, got {tuple(z_next.shape)}")
    return StepResult(z_next, _step_log_prob(logp, z, z_next, p, mask_id))


def _step_log_prob(logp: Tensor, z: Tensor, z_next: Tensor, p: float | Tensor, mask_id: int) -> Tensor:
    """log P(z_next | z) for the predictor with unmasking probability p (a float, or one per row (B,)):
    (B, L, m), (B, L), (B, L) -> (B,)."""
    masked = z == mask_id  # (B, L)
    revealed = masked & (z_next != mask_id)  # (B, L)
    stays = masked & (z_next == mask_id)  # (B, L)
    invalid = (~masked & (z_next != z)) | (z_next < 0) | (z_next > mask_id)  # (B, L)
    token_logp = logp.gather(-1, z_next.clamp(0, mask_id - 1).unsqueeze(-1)).squeeze(-1)  # (B, L)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if isinstance(p, Tensor):  # per row: log 0 = -inf and log1p(-1) = -inf as in the scalar case
        p = p.to(device=logp.device, dtype=torch.float64)
        log_p = torch.log(p).to(logp.dtype).unsqueeze(-1)  # (B, 1)
        log_stay = torch.log1p(-p).to(logp.dtype).unsqueeze(-1).expand_as(token_logp)  # (B, L)
    else:
        log_p = math.log(p) if p > 0 else -math.inf
        log_stay = torch.full_like(zero, math.log1p(-p) if p < 1 else -math.inf)
    per_pos = torch.where(revealed, token_logp + log_p, zero)  # (B, L)
    per_pos = per_pos + torch.where(stays, log_stay, zero)  # (B, L)
    per_pos = per_pos + torch.where(invalid, torch.full_like(zero, -math.inf), zero)  # (B, L)
    return per_pos.sum(dim=-1)  # (B,)


def remask_step(
    z: Tensor,
    s: float,
    u: float,
    schedule: LogLinearSchedule,
    mask_id: int,
    z_next: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> StepResult:
    """Forward half of a corrector: every clean token masked independently w.p. rho = 1 - alpha(u)/alpha(s).

    log q(z_next | z) = sum_{l clean, z'_l = M} log rho + sum_{l clean, z'_l = z_l} log(1 - rho); MASK stays.
    z: (B, L) long -> StepResult(z_next (B, L), log_prob (B,)); independent of the model.
    """
    rho = remask_probability(schedule, s, u)
    clean = z != mask_id  # (B, L)
    if z_next is None:
        r = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)  # (B, L)
        z_next = torch.where(clean & (r < rho), torch.full_like(z, mask_id), z)  # (B, L)
    elif z_next.shape != z.shape:
        raise ValueError(f"z_next must have shape {tuple(z.shape)}, got {tuple(z_next.shape)}")
    hidden = clean & (z_next == mask_id)  # (B, L)
    kept = clean & (z_next == z)  # (B, L)
    invalid = ~(hidden | kept | (~clean & (z_next == mask_id)))  # (B, L)
    log_rho = math.log(rho) if rho > 0 else -math.inf
    log_keep = math.log1p(-rho) if rho < 1 else -math.inf
    zero = torch.zeros((), dtype=dtype, device=z.device)
    per_pos = torch.where(hidden, torch.full_like(zero, log_rho), zero)  # (B, L)
    per_pos = per_pos + torch.where(kept, torch.full_like(zero, log_keep), zero)  # (B, L)
    per_pos = per_pos + torch.where(invalid, torch.full_like(zero, -math.inf), zero)  # (B, L)
    return StepResult(z_next, per_pos.sum(dim=-1))  # (B,)


def corrector_step(
    model: Callable[[Tensor], Tensor],
    z: Tensor,
    s: float,
    schedule: LogLinearSchedule,
    dt: float,
    z_mid: Tensor | None = None,
    z_next: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> CorrectorResult:
    """Gradient-flow corrector at time s (paper Sec. 3.3): re-mask over [s, u = min(s + dt, 1)], reverse u -> s.

    Samples when z_mid and z_next are None, scores the recorded pair otherwise (give both or neither).
    log_prob = log q(z_mid | z) + log P_theta(z_next | z_mid), (B,), differentiable through the second term.
    """
    if (z_mid is None) != (z_next is None):
        raise ValueError("z_mid and z_next must be given together (both recorded) or both None (sampling)")
    if dt <= 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    u = min(s + dt, 1.0)
    mask_id = _mask_id(model)
    if z_mid is None:
        fwd = remask_step(z, s, u, schedule, mask_id, generator=generator)
        rev = step(model, fwd.z_next, u, s, schedule, generator=generator)
    else:
        fwd = remask_step(z, s, u, schedule, mask_id, z_next=z_mid)
        rev = step(model, z_mid, u, s, schedule, z_next=z_next)
    total = fwd.log_prob.to(rev.log_prob.dtype) + rev.log_prob
    return CorrectorResult(fwd.z_next, rev.z_next, total, (fwd.log_prob, rev.log_prob))


def _mask_id(model) -> int:
    mask_id = getattr(model, "mask_id", None)
    if mask_id is None:
        mask_id = getattr(model, "num_tokens", None)
    if mask_id is None:
        raise ValueError("model must expose num_tokens (or mask_id)")
    return int(mask_id)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")
