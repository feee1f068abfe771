"""KL regulariser against the fixed pretrained model along the sampler's path (paper App. D.2).

For the masked sampler the reverse rate from z (masked at l) to z with l set to v is rate_t * p_theta(v | z)_l,
so the I-divergence integrand of App. D.2 per masked position reduces to rate_t * KL(p_theta(.|z)_l || p_ref(.|z)_l)
(the total rates agree, the sum_y Q_ref - Q_theta term vanishes). Discretised on the T-step sampler this is the
KL between the step transition laws: per masked position {stay: 1 - p_k, reveal v: p_k p(v|z)}, whose KL is
p_k KL(p_theta || p_ref), so

    KL(path_theta || path_ref) = E_path [ sum_{k=1}^{T} p_k sum_{l: z_{t_k, l} = M} KL(p_theta(.|z_{t_k})_l || p_ref(.|z_{t_k})_l) ],
    p_k = (alpha(t_{k-1}) - alpha(t_k)) / (1 - alpha(t_k)).

Estimated from the states recorded at S of the T steps (weight T / S, unbiased when the S steps are a uniform
draw). The states come from the rollout policy; the gradient is the pathwise part only (the score-function
term of the path law is dropped, as in GRPO's KL). The reference is the pretrained model, never reset.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..diffusion.schedule import LogLinearSchedule
from ..diffusion.transitions import unmask_probability


def _log_softmax(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def kl_masked_path(
    logits_theta: Tensor,
    logits_ref: Tensor,
    states: Tensor,
    steps_k: Tensor,
    num_steps: int,
    schedule: LogLinearSchedule | None = None,
    mask_id: int | None = None,
) -> Tensor:
    """Path KL estimate (App. D.2), (B,): (T/S) sum_s p_{k_s} sum_{l masked} KL(softmax θ || softmax ref)_l.

    logits_theta, logits_ref: (B, S, L, m) model outputs at the recorded states; states: (B, S, L) long, z_{t_k}
    just before step k; steps_k: (S,) or (B, S) step indices in 1..T; mask_id defaults to m.
    Differentiable w.r.t. logits_theta (logits_ref is treated as a constant).
    """
    if states.dim() != 3:
        raise ValueError(f"states must have shape (B, S, L), got {tuple(states.shape)}")
    if logits_theta.shape[:3] != states.shape:
        raise ValueError(
            f"logits_theta must have shape {tuple(states.shape)} + (m,), got {tuple(logits_theta.shape)}"
        )
    if logits_ref.shape != logits_theta.shape:
        raise ValueError(f"logits_ref must have the shape of logits_theta, got {tuple(logits_ref.shape)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    batch, num_states = states.shape[:2]
    steps_k = torch.as_tensor(steps_k, device=states.device).long()
    if steps_k.dim() == 1:
        steps_k = steps_k.expand(batch, num_states)
    if steps_k.shape != (batch, num_states):
        raise ValueError(
            f"steps_k must have shape ({num_states},) or ({batch}, {num_states}), got {tuple(steps_k.shape)}"
        )
    if steps_k.numel() and (steps_k.min() < 1 or steps_k.max() > num_steps):
        raise ValueError(f"steps_k must lie in 1..num_steps={num_steps}")
    schedule = schedule if schedule is not None else LogLinearSchedule()
    mask_id = logits_theta.shape[-1] if mask_id is None else mask_id
    table = torch.tensor(
        [0.0]
        + [unmask_probability(schedule, k / num_steps, (k - 1) / num_steps) for k in range(1, num_steps + 1)],
        device=states.device,
        dtype=torch.float64,
    )  # (T + 1,)
    p_unmask = table[steps_k]  # (B, S)
    logp = _log_softmax(logits_theta)  # (B, S, L, m)
    logq = _log_softmax(logits_ref.detach())  # (B, S, L, m)
    kl_site = (logp.exp() * (logp - logq)).sum(dim=-1)  # (B, S, L)
    masked = states == mask_id  # (B, S, L)
    per_state = p_unmask.to(kl_site.dtype) * (kl_site * masked).sum(dim=-1)  # (B, S)
    return per_state.sum(dim=1) * (num_steps / num_states)  # (B,)


def kl_to_reference(
    model,
    ref_model,
    states: Tensor,
    steps_k: Tensor,
    num_steps: int,
    schedule: LogLinearSchedule | None = None,
) -> Tensor:
    """`kl_masked_path` with the model calls: one forward of each model on the B * S states. -> (B,)."""
    batch, num_states, length = states.shape
    flat = states.reshape(batch * num_states, length)  # (B S, L)
    logits_theta = model(flat)  # (B S, L, m)
    with torch.no_grad():
        logits_ref = ref_model(flat)  # (B S, L, m)
    m = logits_theta.shape[-1]
    return kl_masked_path(
        logits_theta.reshape(batch, num_states, length, m),
        logits_ref.reshape(batch, num_states, length, m),
        states,
        steps_k,
        num_steps,
        schedule,
        mask_id=getattr(model, "mask_id", m),
    )
