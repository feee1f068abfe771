"""SEPO coefficients and loss (paper Thm 3.2, Sec. 3.2, Remark 3.1, App. B).

Sign convention: the returned loss is Eq. (8) as written,

    loss(theta) = E_{x ~ pi_old} sum_{y in N(x)} w_{x,y} log s_theta(x)_y,   w detached,

and with w = pi(y) A(x) (on-policy, exact ratios, all y != x) its gradient is Thm 3.1's
sum_x pi(x) A(x) sum_{y != x} pi(y) grad log s(x)_y = -grad E_pi[A]: minimising the loss ascends the reward
(tests/test_sepo.py checks this identity to 1e-5 on the exact toy).
"""

from __future__ import annotations

import torch
from torch import Tensor


def ratio(log_score_new: Tensor, log_score_old: Tensor, log_pi_new: Tensor, log_pi_old: Tensor) -> Tensor:
    """r_{x,y} = pi_theta(y)/pi_old(y) * s_old(x)_y / s_theta(x)_y, in log space, detached.  # Sec. 3.2

    All inputs (B, K, m) -> (B, K, m). With exact quantities r_{x,y} = pi_theta(x) / pi_old(x) for every y.
    """
    shape = log_score_new.shape
    for name, value in (
        ("log_score_old", log_score_old),
        ("log_pi_new", log_pi_new),
        ("log_pi_old", log_pi_old),
    ):
        if value.shape != shape:
            raise ValueError(
                f"{name} must have the shape of log_score_new {tuple(shape)}, got {tuple(value.shape)}"
            )
    log_r = (log_pi_new - log_pi_old) + (log_score_old - log_score_new)  # (B, K, m)
    return torch.exp(log_r.detach())  # (B, K, m)


def _check_coefficient_args(ratio: Tensor, advantages: Tensor, pi_hat: Tensor, clip_eps: float) -> None:
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    if ratio.dim() < 1:
        raise ValueError("ratio must have shape (B, ...)")
    if advantages.shape != ratio.shape[:1]:
        raise ValueError(f"advantages must have shape ({ratio.shape[0]},), got {tuple(advantages.shape)}")
    if pi_hat.shape != ratio.shape:
        raise ValueError(
            f"pi_hat must have the shape of ratio {tuple(ratio.shape)}, got {tuple(pi_hat.shape)}"
        )


def ppo_coefficients(
    ratio: Tensor, advantages: Tensor, pi_hat: Tensor, clip_eps: float, zero_clipped: bool = False
) -> Tensor:
    """PPO coefficient w_{x,y} = pi_hat(y) * min(clip(r, 1-eps, 1+eps) A(x), r A(x)).  # App. B.1

    ratio (B, K, m), advantages (B,), pi_hat (B, K, m) probabilities (not logs) -> (B, K, m), detached.
    The min picks the pessimistic surrogate: for A > 0 it caps r at 1+eps, for A < 0 it floors r at 1-eps.
    zero_clipped=False follows App. B.1 literally (a clipped entry keeps the coefficient clip(r) A);
    zero_clipped=True gives PPO's own gradient, which vanishes where the clipped branch is taken.
    """
    _check_coefficient_args(ratio, advantages, pi_hat, clip_eps)
    a = advantages.reshape((-1,) + (1,) * (ratio.dim() - 1)).to(ratio.dtype)  # (B, 1, 1)
    unclipped = ratio * a  # (B, K, m)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * a  # (B, K, m)
    surrogate = torch.minimum(clipped, unclipped)  # (B, K, m)
    if zero_clipped:
        surrogate = torch.where(clipped < unclipped, torch.zeros_like(surrogate), surrogate)  # (B, K, m)
    return (pi_hat * surrogate).detach()  # (B, K, m)


def grpo_coefficients(
    ratio: Tensor,
    advantages: Tensor,
    pi_hat: Tensor,
    clip_eps: float,
    group_size: int,
    zero_clipped: bool = False,
) -> Tensor:
    """GRPO coefficient (App. B.2): the PPO coefficient divided by G, with A group-standardised.

        w_{x_i,y} = pi_hat(y) / G * min(clip(r_{x_i,y}) A(x_i), r_{x_i,y} A(x_i))

    so that `sepo_loss(..., group_size=G)` (sum over the G members, mean over groups) is the mean over the group
    of each member's sum over its neighbours, as in GRPO. advantages: (B,) already standardised by
    `group_advantages`. -> (B, K, m), detached.
    """
    if group_size < 1 or ratio.shape[0] % group_size != 0:
        raise ValueError(f"group_size must be >= 1 and divide the batch {ratio.shape[0]}, got {group_size}")
    return ppo_coefficients(ratio, advantages, pi_hat, clip_eps, zero_clipped) / group_size  # (B, K, m)


grpo = grpo_coefficients  # the name used in the API contract


def sepo_loss(
    log_score: Tensor,
    coefficients: Tensor,
    mask: Tensor,
    position_weight: float = 1.0,
    group_size: int | None = None,
    ratio: Tensor | None = None,
    clip_eps: float | None = None,
) -> tuple[Tensor, dict]:
    """SEPO loss, Eq. (8) / Remark 3.1: only log_score carries gradient.

        per_x(x) = position_weight * sum_{k, v: mask} w_{x,(k,v)} log s_theta(x)_{(k,v)}             (B,)
        loss = mean_b per_x                          (group_size None: PPO, w from `ppo_coefficients`)
        loss = mean_groups sum_{i in group} per_x    (group_size G: GRPO, w from `grpo_coefficients`)

    position_weight = L / K when positions were subsampled (`sample_positions`); a (B,) tensor C_b / K when each
    sequence has its own number C_b of free positions (prompts). Minimising the loss ascends
    the reward (module docstring). log_score, coefficients, mask: (B, K, m). ratio/clip_eps (optional) only
    feed the statistics. Returns (loss scalar, stats dict of detached floats).
    """
    if log_score.dim() != 3:
        raise ValueError(f"log_score must have shape (B, K, m), got {tuple(log_score.shape)}")
    if coefficients.shape != log_score.shape:
        raise ValueError(
            f"coefficients must have the shape of log_score {tuple(log_score.shape)}, got {tuple(coefficients.shape)}"
        )
    if mask.shape != log_score.shape:
        raise ValueError(
            f"mask must have the shape of log_score {tuple(log_score.shape)}, got {tuple(mask.shape)}"
        )
    if torch.is_tensor(position_weight):
        if position_weight.shape != log_score.shape[:1] or not bool((position_weight > 0).all()):
            raise ValueError(f"position_weight must be a float or a ({log_score.shape[0]},) tensor > 0")
        position_weight = position_weight.to(log_score.dtype)
    elif not position_weight > 0:
        raise ValueError(f"position_weight must be > 0, got {position_weight}")
    batch = log_score.shape[0]
    if group_size is not None and (group_size < 1 or batch % group_size != 0):
        raise ValueError(f"group_size must be >= 1 and divide the batch {batch}, got {group_size}")
    mask = mask.to(torch.bool)
    terms = torch.where(mask, coefficients.detach() * log_score, torch.zeros_like(log_score))  # (B, K, m)
    per_x = position_weight * terms.sum(dim=(1, 2))  # (B,)
    if group_size is None:
        loss = per_x.mean()
    else:
        loss = per_x.reshape(-1, group_size).sum(dim=1).mean()
    with torch.no_grad():
        count = mask.sum().clamp_min(1)
        stats = {
            "loss": float(loss),
            "log_score_mean": float(torch.where(mask, log_score, torch.zeros_like(log_score)).sum() / count),
            "coef_abs_mean": float(
                torch.where(mask, coefficients.abs(), torch.zeros_like(coefficients)).sum() / count
            ),
            "num_neighbours": int(mask.sum()),
        }
        if ratio is not None:
            if ratio.shape != log_score.shape:
                raise ValueError(
                    f"ratio must have the shape of log_score {tuple(log_score.shape)}, got {tuple(ratio.shape)}"
                )
            r = ratio[mask]
            stats["ratio_mean"] = float(r.mean()) if r.numel() else 1.0
            stats["ratio_max"] = float(r.max()) if r.numel() else 1.0
            stats["ratio_min"] = float(r.min()) if r.numel() else 1.0
            if clip_eps is not None:
                stats["clip_frac"] = float(((r - 1.0).abs() > clip_eps).double().mean()) if r.numel() else 0.0
    return loss, stats


def trajectory_pg_loss(
    step_log_prob: Tensor,
    old_step_log_prob: Tensor,
    advantages: Tensor,
    clip_eps: float,
    row_weight: Tensor | float | None = None,
) -> tuple[Tensor, dict]:
    """Trajectory-likelihood policy gradient (the DDPO / d1-style baseline), clipped per sampler step:

        r_{x,k} = exp(log p_theta(z_{k-1} | z_k) - log p_old(z_{k-1} | z_k))
        loss = - mean_{x,k} min(r_{x,k} A(x), clip(r_{x,k}, 1-eps, 1+eps) A(x))

    step_log_prob (B, P) with grad (from `diffusion.score_path(..., reduce=False)` on the recorded path),
    old_step_log_prob (B, P) recorded at sampling time, advantages (B,). On-policy its gradient is
    -mean_k grad log p_k * A, i.e. REINFORCE on the sampler's own path (a 1/P-scaled grad E[R]).
    row_weight (a float or (B,) tensor): the per-sequence form instead, loss = -mean_x row_weight_x sum_k min(...),
    whose on-policy gradient is -row_weight * grad log pi(path) A (``update_loss`` passes 1 / C_x: per token).
    Returns (loss scalar, stats dict of detached floats).
    """
    if step_log_prob.dim() != 2:
        raise ValueError(f"step_log_prob must have shape (B, P), got {tuple(step_log_prob.shape)}")
    _check_policy_terms(step_log_prob, {"old_step_log_prob": old_step_log_prob}, advantages, clip_eps)
    log_r = step_log_prob - old_step_log_prob.to(step_log_prob.dtype)  # (B, P)
    r = torch.exp(log_r)  # (B, P), carries the gradient
    surrogate = clipped_surrogate(r, advantages, clip_eps)  # (B, P)
    if row_weight is None:
        loss = -surrogate.mean()
    else:
        loss = -(_row_weight(row_weight, surrogate) * surrogate.sum(dim=1)).mean()
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "ratio_mean": float(r.mean()),
            "ratio_max": float(r.max()),
            "clip_frac": float(((r - 1.0).abs() > clip_eps).double().mean()),
        }
    return loss, stats


def _row_weight(weight: Tensor | float, like: Tensor) -> Tensor:
    """A float or (B,) tensor of positive per-sequence weights as a (B,) tensor of ``like``'s dtype."""
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device)
    w = w.expand(like.shape[0]) if w.dim() == 0 else w
    if w.shape != like.shape[:1] or not bool((w > 0).all()):
        raise ValueError(f"row_weight must be a float or a ({like.shape[0]},) tensor > 0")
    return w


def noised_sepo_loss(
    token_log_prob: Tensor,
    old_token_log_prob: Tensor,
    masked: Tensor,
    step_weight: Tensor,
    advantages: Tensor,
    clip_eps: float,
    row_weight: Tensor | float = 1.0,
) -> tuple[Tensor, dict]:
    """SEPO at every noise level (objective ``sepo_t``): the score-ratio term at noised states x_t of each x.

    At a state z of the absorbing process with position l masked, the score entry towards the clean token is
    s_theta(z, t)_{z^(l <- x_l)} = alpha_t / (1 - alpha_t) * p_theta(x_l | z)_l, so grad log s = grad log
    p_theta(x_l | z)_l. Summed with the T-step ELBO's weights over the variational states z ~ q_t(.|x) this is
    grad ELBO_T(x) (``diffusion.elbo_states``), the surrogate of grad log pi(x) that every noise level of the
    sampler contributes to; at t -> 0 (one masked position) it is today's SEPO term, whose Hamming-1 sum
    reduces to -pi(x^(l)) grad log p_theta(x_l | x^(l)) (docs: "SEPO at every noise level"). Clipped per token:

        r_{s,l} = p_theta(x_l | z_s) / p_old(x_l | z_s)
        loss = -mean_x row_weight_x sum_s w_s sum_{l: z_{s,l} = M} min(r_{s,l} A(x), clip(r_{s,l}, 1-eps, 1+eps) A(x))

    On-policy its gradient is -row_weight * A(x) * (the unbiased estimate of grad ELBO_T(x)).
    token_log_prob (B, S, L) with grad and old_token_log_prob (B, S, L) (``diffusion.elbo_token_log_probs``),
    masked (B, S, L) bool, step_weight (B, S) = (T / S) p_k, advantages (B,). -> (loss, stats of floats).
    """
    if token_log_prob.dim() != 3:
        raise ValueError(f"token_log_prob must have shape (B, S, L), got {tuple(token_log_prob.shape)}")
    _check_policy_terms(
        token_log_prob, {"old_token_log_prob": old_token_log_prob, "masked": masked}, advantages, clip_eps
    )
    if step_weight.shape != token_log_prob.shape[:2]:
        raise ValueError(
            f"step_weight must have shape {tuple(token_log_prob.shape[:2])}, got {tuple(step_weight.shape)}"
        )
    masked = masked.bool()
    log_r = torch.where(
        masked, token_log_prob - old_token_log_prob.to(token_log_prob.dtype), torch.zeros_like(token_log_prob)
    )
    r = torch.exp(log_r)  # (B, S, L), carries the gradient
    surrogate = clipped_surrogate(r, advantages, clip_eps)  # (B, S, L)
    surrogate = torch.where(masked, surrogate, torch.zeros_like(surrogate))
    per_x = (step_weight.to(r.dtype) * surrogate.sum(dim=-1)).sum(dim=1)  # (B,)
    loss = -(_row_weight(row_weight, per_x.unsqueeze(1)) * per_x).mean()
    with torch.no_grad():
        rm = r[masked]
        stats = {
            "loss": float(loss),
            "ratio_mean": float(rm.mean()) if rm.numel() else 1.0,
            "ratio_max": float(rm.max()) if rm.numel() else 1.0,
            "clip_frac": float(((rm - 1.0).abs() > clip_eps).double().mean()) if rm.numel() else 0.0,
            "masked_per_state": float(masked.sum(dim=-1).double().mean()),
        }
    return loss, stats


def clipped_surrogate(r: Tensor, advantages: Tensor, clip_eps: float) -> Tensor:
    """PPO's pessimistic surrogate min(r A, clip(r, 1-eps, 1+eps) A), A (B,) broadcast over r (B, ...)."""
    a = advantages.to(r.dtype).reshape((-1,) + (1,) * (r.dim() - 1))  # (B, 1, ...)
    return torch.minimum(r * a, r.clamp(1.0 - clip_eps, 1.0 + clip_eps) * a)


def _check_policy_terms(log_prob: Tensor, same_shape: dict, advantages: Tensor, clip_eps: float) -> None:
    """ValueError unless every tensor of ``same_shape`` has log_prob's shape, advantages is (B,), eps > 0."""
    for name, value in same_shape.items():
        if value.shape != log_prob.shape:
            raise ValueError(f"{name} must have shape {tuple(log_prob.shape)}, got {tuple(value.shape)}")
    if advantages.shape != log_prob.shape[:1]:
        raise ValueError(f"advantages must have shape ({log_prob.shape[0]},), got {tuple(advantages.shape)}")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
