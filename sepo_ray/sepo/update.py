"""The SEPO update and the rollout's old-policy quantities, each assembled once (pure torch).

The RLlib RLModule (rollout) and Learner (update) call these, and so do the benchmarks: one code path.

Rollout (once per batch, with the weights that sampled x; the quantities travel with the episode):

    x ~ pi_theta_old                                       T-step sampler (+ S states recorded for the KL)
    positions (N, K), weight L/K                           `sample_positions`
    tokens (N, K, J), weight (m-1)/J                       `propose_tokens` (J = m-1: every neighbour)
    old_log_scores = log s_theta_old(x)_y       (N, K, m)  `log_scores`
    old_log_pi_hat = log pi_hat_theta_old(y)    (N, K, m)  `log_pi_hat` (SNIS, M samples at `snis_sites`)

Update (per epoch):

    log_score = log s_theta(x)_y (grad),  log_pi_hat = log pi_hat_theta(y) (same SNIS sites: common random
    numbers, so r = 1 exactly at theta = theta_old)
    r = (pi_hat_theta(y) / pi_hat_old(y)) (s_old(x)_y / s_theta(x)_y)                      Thm 3.2
    w = pi_hat_theta(y) min(clip(r, 1-eps, 1+eps) A, r A)                                App. B
    J_x = (L/K)((m-1)/J) sum_{y proposed} w log s_theta(x)_y                             Rem. 3.1
    loss = mean_x (J_x + alpha KL_x(pi_theta || pi_pre)) / C_x                           D.2

Objectives (setting ``objective``), each J_x an estimate whose on-policy gradient is -A(x) grad log pi(x) for
ONE sequence, so that alpha weighs the same per-sequence KL against the same advantage scale whatever the
objective:

- ``sepo``: J_x above, the score-ratio loss at the clean x (t -> 0, Eq. 8);
- ``sepo_t``: the score-ratio loss at noised states x_t ~ q_t(.|x) of every noise level of the T-step sampler
  (``noise_states`` S per sequence, ELBO weights; ``loss.noised_sepo_loss``), J_x = -A grad ELBO_T(x) on-policy;
- ``trajectory``: the DDPO / d1-style baseline, J_x = -sum_k min(r_k A, clip(r_k) A) over the P recorded
  transitions of the sampler's own path.

Per-token scale: the objective and the KL of each sequence are divided by its C_x free (completion) tokens,
C_x = L without a prompt, so alpha is the weight of one nat of path KL against one unit of advantage, the same
for every objective and every length, and the loss magnitude does not grow with L.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from .. import diffusion
from .kl import kl_to_reference
from .loss import noised_sepo_loss, ppo_coefficients, ratio, sepo_loss, trajectory_pg_loss
from .neighbours import neighbour_mask, proposal_mask, propose_tokens, sample_positions
from .scores import log_scores
from .snis import draw_snis_sites, log_pi_hat


@dataclass(frozen=True)
class UpdateSpec:
    """What the rollout and the update need; field names and meanings are those of the settings schema
    (``sepo_ray.settings``), which holds the defaults. ``num_tokens`` is the task's m."""

    num_tokens: int
    objective: str
    clip_eps: float
    kl_alpha: float
    zero_clipped: bool
    snis_samples: int
    denoise_steps: int
    corrector_steps: int
    kl_steps: int
    noise_states: int
    trajectory_steps: int | None
    neighbour_positions: int | None
    neighbour_tokens: int | None
    score_estimator: str

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], num_tokens: int) -> UpdateSpec:
        """Pick the fields by name from a settings mapping (a config's SEPO fields)."""
        names = [f.name for f in fields(cls) if f.name != "num_tokens"]
        return cls(num_tokens=int(num_tokens), **{name: settings[name] for name in names})


def _log_pi_hat(model, x, positions, spec: UpdateSpec, generator, batch_size, sites, others) -> Tensor:
    """log pi_hat(y) for the (proposed) neighbours: SNIS at ``sites`` with M = snis_samples, or the single-
    sample estimate when M = 0 (Sec. 3.1). (N, L), (N, K) -> (N, K, m), no grad."""
    snis = int(spec.snis_samples)
    return log_pi_hat(
        model,
        x,
        positions,
        snis,
        spec.score_estimator,
        generator=generator,
        batch_size=batch_size,
        sites=sites if snis else None,
        others=others,
    )


def model_mask_id(model, spec: UpdateSpec) -> int:
    """The MASK id of a denoiser: ``model.mask_id`` if it has one, else m."""
    return int(getattr(model, "mask_id", spec.num_tokens))


@torch.no_grad()
def old_policy(
    model,
    x: Tensor,
    spec: UpdateSpec,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    free: Tensor | None = None,
) -> dict[str, Tensor]:
    """SEPO's old-policy quantities for the sampled x (N, L), computed once per batch (module docstring).

    free: optional (N, L) bool, False at prompt tokens: neighbours and SNIS sites then lie in the completion.
    Returns positions (N, K), neighbour_tokens (N, K, J) (only with spec.neighbour_tokens), old_log_scores and
    old_log_pi_hat (N, K, m) float32, snis_sites (N, K, J, M) long, and ``free`` when given.
    """
    n, length = x.shape
    m, snis = spec.num_tokens, int(spec.snis_samples)
    positions, _ = sample_positions(
        n, length, spec.neighbour_positions, generator=generator, device=x.device, free=free
    )  # (N, K)
    out = {"positions": positions} if free is None else {"positions": positions, "free": free}
    others = None
    if spec.neighbour_tokens is not None:
        others, _ = propose_tokens(x, positions, m, spec.neighbour_tokens, generator=generator)  # (N, K, J)
        out["neighbour_tokens"] = others
    old_log_scores = log_scores(model, x, positions, spec.score_estimator, batch_size=batch_size)  # (N, K, m)
    sites = draw_snis_sites(
        positions, m, snis, length, generator=generator, others=others, free=free
    )  # (N, K, J, M)
    old_log_pi_hat = _log_pi_hat(model, x, positions, spec, generator, batch_size, sites, others)  # (N, K, m)
    out.update(old_log_scores=old_log_scores.float(), old_log_pi_hat=old_log_pi_hat.float(), snis_sites=sites)
    return out


@torch.no_grad()
def rollout(
    model,
    num: int,
    length: int,
    spec: UpdateSpec,
    generator: torch.Generator | None = None,
    schedule: diffusion.LogLinearSchedule | None = None,
    batch_size: int | None = None,
    prompt: Tensor | None = None,
) -> dict[str, Tensor]:
    """Sample ``num`` sequences with the T-step sampler and attach everything the update needs.

    prompt: optional (N, P) long, MASK-padded: clamped context at the start of each sequence (see
    ``diffusion.sample``); the loss then touches only completion positions.

    Returns x (N, L) long, kl_states (N, S, L), kl_steps (N, S), sample_log_prob (N,), ``free`` (N, L) with a
    prompt, and per objective: "sepo" the :func:`old_policy` quantities; "sepo_t" noise_states (N, S', L),
    noise_weights (N, S') and old_token_log_prob (N, S', L) (``diffusion.elbo_states``, S' = noise_states);
    "trajectory" path_states (N, P+1, L) and old_step_log_prob (N, P). Random numbers are drawn in this
    order: KL steps, sampler, the objective's quantities.
    """
    schedule = schedule or diffusion.LogLinearSchedule()
    steps = int(spec.denoise_steps)
    device = generator.device if generator is not None else None
    kl_steps = (
        torch.randperm(steps, generator=generator, device=device)[: int(spec.kl_steps)] + 1
    )  # (S,) in 1..T
    trajectory = spec.objective == "trajectory"
    out = diffusion.sample(
        model,
        num,
        length,
        steps,
        schedule,
        corrector_steps=int(spec.corrector_steps),
        generator=generator,
        record_states_at=kl_steps,
        record_path=trajectory,
        prompt=prompt,
    )
    x = out.x  # (N, L)
    free = None
    if prompt is not None:
        free = torch.ones_like(x, dtype=torch.bool)  # (N, L)
        free[:, : prompt.shape[1]] = prompt.to(x.device) == model_mask_id(model, spec)  # prompt tokens: False
    batch = {} if free is None else {"free": free}
    if spec.objective == "sepo":
        batch = old_policy(model, x, spec, generator, batch_size, free=free)
    elif spec.objective == "sepo_t":  # noised states of x and the old policy's token log-probs there
        states, weights = diffusion.elbo_states(
            x, steps, int(spec.noise_states), model_mask_id(model, spec), schedule, generator, free
        )  # (N, S', L), (N, S')
        batch["noise_states"], batch["noise_weights"] = states, weights.float()
        batch["old_token_log_prob"] = diffusion.elbo_token_log_probs(
            model, x, states, model_mask_id(model, spec)
        ).float()  # (N, S', L)
    if trajectory:  # the baseline keeps the whole path and its per-step log-probabilities
        batch["path_states"] = out.path.states  # (N, P + 1, L)
        step_log_prob = out.path.log_probs  # (N, P) as drawn: score_path's values without its P model calls
        if step_log_prob is None:
            step_log_prob = diffusion.score_path(model, out.path, schedule, reduce=False)
        batch["old_step_log_prob"] = step_log_prob.float()
    return {
        "x": x,
        **batch,
        "kl_states": out.states,  # (N, S, L)
        "kl_steps": kl_steps.expand(num, -1).clone(),  # (N, S)
        "sample_log_prob": out.log_prob.float(),  # (N,)
    }


def sepo_objective(
    model,
    batch: Mapping[str, Tensor],
    spec: UpdateSpec,
    generator: torch.Generator | None = None,
    batch_size=None,
) -> tuple[Tensor, dict]:
    """SEPO, Remark 3.1 / App. B, with the clipped ratio r_{x,y} and weights pi_hat_theta(y) -> (loss, stats).

    batch: x (N, L), positions (N, K), old_log_scores / old_log_pi_hat (N, K, m), snis_sites, advantages (N,)
    and, with proposals, neighbour_tokens (N, K, J).
    """
    x, positions = batch["x"].long(), batch["positions"].long()  # (N, L), (N, K)
    others = batch["neighbour_tokens"].long() if spec.neighbour_tokens is not None else None  # (N, K, J)
    log_score = log_scores(
        model, x, positions, spec.score_estimator, batch_size=batch_size
    )  # (N, K, m), grad
    with torch.no_grad():
        sites = batch["snis_sites"].long()  # the rollout's sites: common random numbers
        log_pi = _log_pi_hat(model, x, positions, spec, generator, batch_size, sites, others)  # (N, K, m)
        r = ratio(log_score.detach(), batch["old_log_scores"], log_pi, batch["old_log_pi_hat"])  # (N, K, m)
        # GRPO (App. B.2) = PPO's coefficient with group-standardised advantages, averaged over the group; the
        # mean over all B * G sequences in `sepo_loss` is that average, whatever the order of the batch.
        coefficients = ppo_coefficients(
            r, batch["advantages"], log_pi.exp(), float(spec.clip_eps), zero_clipped=bool(spec.zero_clipped)
        )  # (N, K, m)
        if others is None:
            mask, token_weight = neighbour_mask(x, positions, spec.num_tokens), 1.0  # (N, K, m)
        else:
            mask, token_weight = (
                proposal_mask(others, spec.num_tokens),
                (spec.num_tokens - 1) / others.shape[-1],
            )
    weight = 1.0 / positions.shape[1]  # (C_x / K) / C_x: the L/K (C_x/K) position weight, per token
    return sepo_loss(
        log_score,
        coefficients,
        mask,
        position_weight=weight * token_weight,
        ratio=r,
        clip_eps=float(spec.clip_eps),
    )


def free_tokens(batch: Mapping[str, Tensor]) -> Tensor:
    """C_x, the free (completion) tokens of each sequence: L without a prompt. -> (N,) float64."""
    x = batch["x"]
    free = batch.get("free")
    if free is None:
        return torch.full((x.shape[0],), float(x.shape[1]), dtype=torch.float64, device=x.device)
    return free.bool().sum(dim=1).double().clamp_min(1.0)


def path_subset(
    num_steps: int, k: int | None, num_rows: int, generator: torch.Generator | None = None
) -> tuple[Tensor, float]:
    """(indices (N, k) of the transitions to re-score in each row, sorted, and the weight P / k): a uniform k-subset
    of the path's P transitions without replacement, drawn independently for every row (DDPO draws its timesteps
    per sample), so that (P / k) sum_{j in subset_n} f_{n,j} is unbiased for sum_j f_{n,j} in every row and the
    subsets' noise averages over the batch; every transition with weight 1 for k None or k >= P."""
    if k is None or k >= num_steps:
        return torch.arange(num_steps).expand(num_rows, -1), 1.0
    device = generator.device if generator is not None else None
    keys = torch.rand(num_rows, num_steps, generator=generator, device=device)  # (N, P) iid: a random order
    return keys.argsort(dim=1)[:, :k].sort(dim=1).values.cpu(), num_steps / k


def trajectory_objective(
    model,
    batch: Mapping[str, Tensor],
    spec: UpdateSpec,
    schedule: diffusion.LogLinearSchedule | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict]:
    """Baseline: PPO-clipped REINFORCE on the sampler's own per-step log-probabilities (DDPO / d1), summed
    over the path and divided by C_x (per token); with ``trajectory_steps`` k, the sum over a uniform k-subset of
    each path's transitions, drawn per row, times P / k (:func:`path_subset`; one model call on the N k chosen
    states, ``diffusion.score_transitions``)."""
    ops = diffusion.path_ops(int(spec.denoise_steps), int(spec.corrector_steps))
    states = batch["path_states"].long()  # (N, P + 1, L)
    chosen, weight = path_subset(len(ops), spec.trajectory_steps, states.shape[0], generator)  # (N, k), P / k
    path = diffusion.Path(states, ops)
    if weight == 1.0:
        step_log_prob = diffusion.score_path(model, path, schedule, reduce=False)  # (N, P)
    else:
        step_log_prob = diffusion.score_transitions(model, path, chosen, schedule)  # (N, k)
    old = batch["old_step_log_prob"]  # (N, P)
    return trajectory_pg_loss(
        step_log_prob,
        old.gather(1, chosen.to(old.device)),  # (N, k)
        batch["advantages"],
        float(spec.clip_eps),
        row_weight=weight / free_tokens(batch),
    )


def noised_objective(model, batch: Mapping[str, Tensor], spec: UpdateSpec) -> tuple[Tensor, dict]:
    """SEPO at every noise level (``loss.noised_sepo_loss``) on the rollout's noised states, per token."""
    states = batch["noise_states"].long()  # (N, S', L)
    mask_id = model_mask_id(model, spec)
    token_log_prob = diffusion.elbo_token_log_probs(model, batch["x"].long(), states, mask_id)  # (N, S', L)
    return noised_sepo_loss(
        token_log_prob,
        batch["old_token_log_prob"],
        states == mask_id,
        batch["noise_weights"],
        batch["advantages"],
        float(spec.clip_eps),
        row_weight=1.0 / free_tokens(batch),
    )


def update_loss(
    model,
    reference,
    batch: Mapping[str, Tensor],
    spec: UpdateSpec,
    generator: torch.Generator | None = None,
    schedule: diffusion.LogLinearSchedule | None = None,
    batch_size: int | None = None,
) -> tuple[Tensor, dict]:
    """One epoch's loss: mean_x (J_x + alpha KL_x(pi_theta || pi_pretrained)) / C_x (module docstring; the
    path KL of App. D.2).

    reference: the frozen pretrained denoiser (never reset to the current model); unused when alpha = 0.
    Returns (total loss, stats) with stats["objective_loss"], stats["kl"] (the mean per-sequence path KL, nats)
    and stats["total_loss"] as tensors.
    """
    schedule = schedule or diffusion.LogLinearSchedule()
    if spec.objective == "trajectory":
        loss, stats = trajectory_objective(model, batch, spec, schedule, generator)
    elif spec.objective == "sepo_t":
        loss, stats = noised_objective(model, batch, spec)
    else:
        loss, stats = sepo_objective(model, batch, spec, generator, batch_size)
    total = loss
    kl = torch.zeros((), device=loss.device)
    if float(spec.kl_alpha) > 0:
        kl_x = kl_to_reference(
            model,
            reference,
            batch["kl_states"].long(),  # (N, S, L)
            batch["kl_steps"].long(),  # (N, S)
            num_steps=int(spec.denoise_steps),
            schedule=schedule,
        )  # (N,)
        kl = kl_x.mean()
        total = total + float(spec.kl_alpha) * (kl_x / free_tokens(batch).to(kl_x.dtype)).mean()
    stats = {**stats, "objective_loss": loss.detach(), "kl": kl.detach(), "total_loss": total.detach()}
    return total, stats
