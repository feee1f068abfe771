"""Derivative-free guidance at sampling time: SVDD's value-weighted importance sampling (Li et al. 2024).

At a scored step from t to s, instead of one draw z' ~ P_theta(. | z) the sampler draws M candidates
z'_1..z'_M iid from the same step law, values each by the reward r of its predicted clean sequence

    v(z') = r(x_hat_0(z')),    x_hat_0(z') = z' at clean positions, argmax (or one draw) of softmax f_theta(z')
                                                at masked ones                     (SVDD Sec. 4, "posterior mean")

and keeps one with probability softmax(v / temperature) (temperature 0: the argmax, first on ties). With a
constant value the kept candidate is uniform among M iid draws, so the step law is exactly P_theta's; as M grows
it tends to P_theta(z' | z) exp(v(z') / temperature) / Z (the soft-optimal policy of SVDD Thm 1). Unscored steps
are the plain sampler's. Every candidate scored is one call of the reward (counted: ``oracle_calls``).

Pure torch: the reward is a callable ``value(x (N, L) long) -> (N,)`` passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import Tensor

from .schedule import LogLinearSchedule
from .transitions import _gumbel_argmax, _log_softmax, _mask_id, _model_device, step

Value = Callable[[Tensor], Tensor]


class SVDDStep(NamedTuple):
    z_next: Tensor  # (B, L) long, the kept candidate
    candidates: Tensor  # (B, M, L) long
    values: Tensor  # (B, M) float64, v of each candidate
    probs: Tensor  # (B, M) float64, the selection law given the candidates
    logits_next: Tensor | None  # (B, L, m) model(z_next), or None when z_next is clean (s = 0)
    oracle_calls: int


class GuidedSample(NamedTuple):
    x: Tensor  # (N, L) long, final sequences
    oracle_calls: int  # reward calls spent on all N sequences


def selection_probs(values: Tensor, temperature: float) -> Tensor:
    """Law of the kept candidate: softmax(values / temperature) over M; temperature 0: one-hot of the first
    argmax. values (B, M) float (-inf allowed, NaN refused) -> (B, M) float64."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    values = values.double()
    if torch.isnan(values).any():
        raise ValueError("values must not be NaN")
    if temperature == 0:
        return torch.nn.functional.one_hot(values.argmax(dim=-1), values.shape[-1]).double()  # (B, M)
    return torch.softmax(values / temperature, dim=-1)  # (B, M)


def predicted_clean(
    logits: Tensor, z: Tensor, predict: str = "argmax", generator: torch.Generator | None = None
) -> Tensor:
    """x_hat_0(z): clean positions kept, masked ones the argmax (``"argmax"``) or one draw (``"sample"``) of
    softmax(logits). logits (B, L, m), z (B, L) long with MASK = m -> (B, L) long."""
    mask_id = logits.shape[-1]
    if predict == "argmax":
        tokens = logits.argmax(dim=-1)  # (B, L)
    elif predict == "sample":
        tokens = _gumbel_argmax(_log_softmax(logits), generator)  # (B, L)
    else:
        raise ValueError(f"predict must be 'argmax' or 'sample', got {predict!r}")
    return torch.where(z == mask_id, tokens, z)  # (B, L)


@torch.no_grad()
def svdd_step(
    model: Callable[[Tensor], Tensor],
    z: Tensor,
    t: float,
    s: float,
    schedule: LogLinearSchedule,
    value: Value,
    num_candidates: int,
    temperature: float = 0.0,
    predict: str = "argmax",
    candidates: Tensor | None = None,
    generator: torch.Generator | None = None,
    logits: Tensor | None = None,
) -> SVDDStep:
    """One value-weighted step from t to s < t (module docstring): draw M candidates (or take the recorded
    ``candidates`` (B, M, L)), value them, keep one.

    z: (B, L) long; logits: optional precomputed model(z), (B, L, m). With recorded candidates the kept one
    is still drawn from ``probs``, so ``probs`` is the exact selection law to check against.
    """
    batch, length = z.shape
    if candidates is None:
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        if logits is None:
            logits = model(z)  # (B, L, m)
        z_rep = z.repeat_interleave(num_candidates, dim=0)  # (B * M, L)
        drawn = step(
            None,
            z_rep,
            t,
            s,
            schedule,
            generator=generator,
            logits=logits.repeat_interleave(num_candidates, 0),
        )
        candidates = drawn.z_next.view(batch, num_candidates, length)  # (B, M, L)
    elif candidates.dim() != 3 or candidates.shape[0] != batch or candidates.shape[2] != length:
        raise ValueError(f"candidates must have shape ({batch}, M, {length}), got {tuple(candidates.shape)}")
    num = candidates.shape[1]
    flat = candidates.reshape(batch * num, length)  # (B * M, L)
    mask_id = _mask_id(model)
    cand_logits = None
    if (flat == mask_id).any():
        cand_logits = model(flat)  # (B * M, L, m)
        x_hat = predicted_clean(cand_logits, flat, predict, generator)  # (B * M, L)
    else:  # every candidate is clean (the last step): its value is the reward itself
        x_hat = flat
    values = torch.as_tensor(value(x_hat), dtype=torch.float64).reshape(-1).to(z.device)  # (B * M,)
    if values.numel() != batch * num:
        raise ValueError(f"value returned {values.numel()} values for {batch * num} sequences")
    values = values.view(batch, num)  # (B, M)
    probs = selection_probs(values, temperature)  # (B, M)
    if temperature == 0:
        pick = probs.argmax(dim=-1)  # (B,)
    else:
        pick = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    rows = torch.arange(batch, device=z.device)
    z_next = candidates[rows, pick]  # (B, L)
    logits_next = None
    if cand_logits is not None and (z_next == mask_id).any():
        logits_next = cand_logits.view(batch, num, length, -1)[rows, pick]  # (B, L, m)
    return SVDDStep(z_next, candidates, values, probs, logits_next, batch * num)


def svdd_plan(calls_per_sequence: int, steps: int, max_candidates: int) -> tuple[int, tuple[int, ...]]:
    """(M, scored steps k) spending at most ``calls_per_sequence`` reward calls per sequence: M = min(max, calls)
    candidates at S = min(T, calls // M) steps k in 1..T, spread evenly and always including the last (k = 1,
    where the value is the reward of the candidate itself); when S = T, M grows to calls // T.
    Calls per sequence = M * S <= calls_per_sequence."""
    if calls_per_sequence < 1 or steps < 1 or max_candidates < 1:
        raise ValueError(
            f"calls_per_sequence, steps and max_candidates must be >= 1, got "
            f"{calls_per_sequence}, {steps}, {max_candidates}"
        )
    num = min(max_candidates, calls_per_sequence)
    scored = min(steps, calls_per_sequence // num)
    if scored == steps:
        num = calls_per_sequence // steps
    ks = tuple(sorted({1 + (j * steps) // scored for j in range(scored)}))
    return num, ks


@torch.no_grad()
def svdd_sample(
    model: Callable[[Tensor], Tensor],
    value: Value,
    num_samples: int,
    length: int,
    steps: int,
    num_candidates: int,
    scored_steps: Iterable[int],
    temperature: float = 0.0,
    predict: str = "argmax",
    schedule: LogLinearSchedule | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> GuidedSample:
    """``num_samples`` sequences from the T-step sampler with SVDD at the step indices ``scored_steps`` (k in
    1..T, step k goes from k/T to (k-1)/T; the others are plain :func:`~sepo_ray.diffusion.transitions.step`).

    Reward calls: num_samples * num_candidates * len(scored_steps), returned as ``oracle_calls``.
    """
    scored = set(int(k) for k in scored_steps)
    if any(not 1 <= k <= steps for k in scored):
        raise ValueError(f"scored_steps must hold step indices in 1..{steps}, got {sorted(scored)}")
    if num_samples < 1 or length < 1:
        raise ValueError(f"num_samples and length must be >= 1, got {num_samples}, {length}")
    schedule = schedule if schedule is not None else LogLinearSchedule()
    device = torch.device(device) if device is not None else _model_device(model)
    z = torch.full((num_samples, length), _mask_id(model), dtype=torch.long, device=device)  # (N, L)
    logits, calls = None, 0
    for k in range(steps, 0, -1):
        t, s = k / steps, (k - 1) / steps
        if k in scored:
            res = svdd_step(
                model,
                z,
                t,
                s,
                schedule,
                value,
                num_candidates,
                temperature,
                predict,
                generator=generator,
                logits=logits,
            )
            z, logits, calls = res.z_next, res.logits_next, calls + res.oracle_calls
        else:
            z, logits = step(model, z, t, s, schedule, generator=generator, logits=logits).z_next, None
    return GuidedSample(z, calls)
