"""Reverse sampler of the masked diffusion model (the one-step laws are in ``transitions``): `sample` draws
sequences and records what training needs (states at chosen steps, the whole path with each transition's
log-probability), `score_path` re-scores a recorded path with gradient and `score_transitions` chosen transitions
of it, different ones in each row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .schedule import LogLinearSchedule
from .transitions import (
    _log_softmax,
    _mask_id,
    _model_device,
    _step_log_prob,
    corrector_step,
    remask_step,
    step,
    unmask_probability,
)


@dataclass
class Path:
    """Every state a sampling run visited, for re-scoring (trajectory REINFORCE, KL, tests).

    states: (N, P + 1, L) long, states[:, 0] is all-MASK and states[:, -1] the final sample.
    ops: P transitions, ("reverse", t, s) for a predictor / corrector reverse half (scored by `step`) or
    ("remask", s, u) for the corrector's forward half (scored by `remask_step`; independent of theta).
    log_probs: (N, P) the log-probability of each transition as the sampler drew it (no grad), or None; equal, bit
    for bit, to `score_path(model, path, reduce=False)` under the sampling weights (the same calls on the same
    states), so a rollout need not re-score its own path.
    """

    states: Tensor
    ops: list[tuple[str, float, float]] = field(default_factory=list)
    log_probs: Tensor | None = None


@dataclass
class Sample:
    """Output of `sample`.

    x: (N, L) long, final sequences (no MASK left).
    log_prob: (N,) float, sum of the log-probabilities of every transition of the recorded path (no grad).
    states: (N, S, L) long, z_{t_k} just before step k for k in `record_states_at` (step k: t_k -> t_{k-1}),
        or None.
    path: full `Path` when `record_path=True`, else None.
    """

    x: Tensor
    log_prob: Tensor
    states: Tensor | None = None
    path: Path | None = None


def path_ops(
    steps: int, corrector_steps: int = 0, corrector_dt: float | None = None
) -> list[tuple[str, float, float]]:
    """The transitions `sample` makes, in order: ("reverse", t_k, t_{k-1}) for k = T..1, each followed by
    `corrector_steps` pairs ("remask", s, min(s + dt, 1)), ("reverse", min(s + dt, 1), s) with s = t_{k-1}.
    With a recorded `Path.states`, this is all `score_path` needs to re-score a trajectory."""
    dt = 1.0 / steps if corrector_dt is None else float(corrector_dt)
    ops: list[tuple[str, float, float]] = []
    for k in range(steps, 0, -1):
        t, s = k / steps, (k - 1) / steps
        ops.append(("reverse", t, s))
        u = min(s + dt, 1.0)
        ops += [("remask", s, u), ("reverse", u, s)] * corrector_steps
    return ops


def time_grid(steps: int) -> Tensor:
    """t_k = k / T for k = T, ..., 0: (T + 1,) float64, decreasing from 1 to 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.arange(steps, -1, -1, dtype=torch.float64) / steps  # (T + 1,)


def _per_transition(terms: list[Tensor]) -> Tensor:
    """Stack per-transition log-probabilities [(B,)] * P into (B, P) in the widest of their float dtypes."""
    dtype = max((x.dtype for x in terms), key=lambda d: torch.finfo(d).bits)
    return torch.stack([x.to(dtype) for x in terms], dim=1)  # (B, P)


@torch.no_grad()
def sample(
    model: Callable[[Tensor], Tensor],
    num_samples: int,
    length: int,
    steps: int,
    schedule: LogLinearSchedule | None = None,
    corrector_steps: int = 0,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    record_states_at: Tensor | None = None,
    progress: bool | Callable[[int, int], None] = False,
    record_path: bool = False,
    corrector_dt: float | None = None,
    device: torch.device | str | None = None,
    prompt: Tensor | None = None,
) -> Sample:
    """Draw `num_samples` sequences from pi_theta with the T-step sampler (+ c corrector steps after each step).

    prompt: optional (N, P) long, P <= L: the first P tokens of each sequence, MASK where a shorter prompt ends.
    Prompt tokens start unmasked and the masked ("subs") step carries unmasked tokens over, so they are clamped
    at every step and contribute nothing to log_prob; the gradient-flow corrector (which re-masks clean tokens)
    is refused with a prompt.

    Step k = T..1 goes from t_k = k/T to t_{k-1}; after it, `corrector_steps` correctors at s = t_{k-1} with
    increment `corrector_dt` (default 1/T). Runs in batches of `batch_size` (default all at once).
    record_states_at: (S,) long step indices k in 1..T -> Sample.states (N, S, L), z_{t_k} before step k.
    progress: True prints "sampling k/T" lines to stderr; a callable gets (done, total) after each step.
    """
    if num_samples < 1 or length < 1:
        raise ValueError(f"num_samples and length must be >= 1, got {num_samples}, {length}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    schedule = schedule if schedule is not None else LogLinearSchedule()
    batch_size = num_samples if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dt = 1.0 / steps if corrector_dt is None else float(corrector_dt)
    device = torch.device(device) if device is not None else _model_device(model)
    mask_id = _mask_id(model)
    if prompt is not None:
        if prompt.dim() != 2 or prompt.shape[0] != num_samples or prompt.shape[1] > length:
            raise ValueError(
                f"prompt must have shape ({num_samples}, P) with P <= length={length}, got {tuple(prompt.shape)}"
            )
        if corrector_steps:
            raise ValueError("corrector_steps must be 0 with a prompt (the corrector would re-mask it)")
    record = None
    if record_states_at is not None:
        record = torch.as_tensor(record_states_at, dtype=torch.long).reshape(-1).tolist()
        if any(not 1 <= k <= steps for k in record):
            raise ValueError(f"record_states_at must hold step indices in 1..{steps}, got {record}")
    report = progress if callable(progress) else None
    total = steps * -(-num_samples // batch_size)
    done = 0
    xs, log_probs, states, paths, path_log_probs = [], [], [], [], []
    ops: list[tuple[str, float, float]] = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        z = torch.full((n, length), mask_id, dtype=torch.long, device=device)  # (n, L)
        if prompt is not None:
            z[:, : prompt.shape[1]] = prompt[start : start + n].to(device)  # (n, P) clamped context
        log_prob = torch.zeros(n, dtype=torch.float64, device=device)  # (n,)
        before = {}
        visited = [z] if record_path else None
        terms: list[Tensor] = []  # per transition (n,), with record_path
        ops = []
        for k in range(steps, 0, -1):
            t, s = k / steps, (k - 1) / steps
            if record is not None and k in record:
                before[k] = z
            res = step(model, z, t, s, schedule, generator=generator)
            z, log_prob = res.z_next, log_prob + res.log_prob.double()
            ops.append(("reverse", t, s))
            if record_path:
                visited.append(z)
                terms.append(res.log_prob)
            for _ in range(corrector_steps):
                cor = corrector_step(model, z, s, schedule, dt, generator=generator)
                z, log_prob = cor.z_next, log_prob + cor.log_prob.double()
                u = min(s + dt, 1.0)
                ops += [("remask", s, u), ("reverse", u, s)]
                if record_path:
                    visited += [cor.z_mid, cor.z_next]
                    terms += list(cor.halves)
            done += 1
            if report is not None:
                report(done, total)
            elif progress:
                import sys

                print(f"sampling {done}/{total}", file=sys.stderr, flush=True)
        xs.append(z)
        log_probs.append(log_prob)
        if record is not None:
            states.append(torch.stack([before[k] for k in record], dim=1))  # (n, S, L)
        if record_path:
            paths.append(torch.stack(visited, dim=1))  # (n, P + 1, L)
            path_log_probs.append(_per_transition(terms))  # (n, P)
    return Sample(
        x=torch.cat(xs),  # (N, L)
        log_prob=torch.cat(log_probs),  # (N,)
        states=torch.cat(states) if record is not None else None,  # (N, S, L)
        path=Path(torch.cat(paths), ops, torch.cat(path_log_probs)) if record_path else None,
    )


def score_path(
    model: Callable[[Tensor], Tensor],
    path: Path,
    schedule: LogLinearSchedule | None = None,
    reduce: bool = True,
) -> Tensor:
    """Re-score a recorded path: sum_j log P_theta(states[:, j+1] | states[:, j]) with gradient.

    path.states (N, P + 1, L) -> (N,) (reduce=True) or per-transition (N, P) (reduce=False). "remask" ops
    contribute their forward log-probability (no parameters), "reverse" ops the model's step log-prob.
    """
    schedule = schedule if schedule is not None else LogLinearSchedule()
    states = path.states
    if states.shape[1] != len(path.ops) + 1:
        raise ValueError(
            f"path.states must hold len(ops) + 1 = {len(path.ops) + 1} states, got {states.shape[1]}"
        )
    mask_id = _mask_id(model)
    terms = []
    for j, (kind, a, b) in enumerate(path.ops):
        z, z_next = states[:, j], states[:, j + 1]  # (N, L)
        if kind == "reverse":
            terms.append(step(model, z, a, b, schedule, z_next=z_next).log_prob)  # (N,)
        elif kind == "remask":
            terms.append(remask_step(z, a, b, schedule, mask_id, z_next=z_next).log_prob)  # (N,)
        else:
            raise ValueError(f"path.ops entries must be 'reverse' or 'remask', got {kind!r}")
    per_step = _per_transition(terms)  # (N, P)
    return per_step.sum(dim=1) if reduce else per_step


def score_transitions(
    model: Callable[[Tensor], Tensor],
    path: Path,
    chosen: Tensor,
    schedule: LogLinearSchedule | None = None,
) -> Tensor:
    """Re-score chosen transitions of a recorded path, other ones in each row, with gradient:

        out[n, i] = log P_theta(states[n, c + 1] | states[n, c]),   c = chosen[n, i],

    i.e. ``score_path(model, path, reduce=False).gather(1, chosen)``, but with one model call on the N k chosen
    states of "reverse" ops instead of P calls on N states: the denoiser f_theta(z) does not read the time, which
    enters each row's law only through its unmasking probability p(t, s). path.states (N, P + 1, L), chosen (N, k)
    long in 0..P-1 -> (N, k) in the widest dtype of the terms."""
    schedule = schedule if schedule is not None else LogLinearSchedule()
    states, ops = path.states, path.ops
    if chosen.dim() != 2 or chosen.shape[0] != states.shape[0]:
        raise ValueError(f"chosen must have shape (N={states.shape[0]}, k), got {tuple(chosen.shape)}")
    if chosen.numel() and not 0 <= int(chosen.min()) <= int(chosen.max()) < len(ops):
        raise ValueError(f"chosen transitions must lie in 0..{len(ops) - 1}")
    n, k = chosen.shape
    cols = chosen.to(states.device)  # (N, k)
    rows = torch.arange(n, device=states.device).unsqueeze(1).expand(n, k)  # (N, k)
    z = states[rows, cols].reshape(n * k, -1)  # (N k, L)
    z_next = states[rows, cols + 1].reshape(n * k, -1)  # (N k, L)
    flat = cols.reshape(-1).tolist()
    reverse = [i for i, c in enumerate(flat) if ops[c][0] == "reverse"]
    remask = [i for i, c in enumerate(flat) if ops[c][0] == "remask"]
    if len(reverse) + len(remask) != len(flat):
        raise ValueError("path.ops entries must be 'reverse' or 'remask'")
    parts = []  # (flat indices, their log-probabilities)
    if reverse:
        idx = torch.tensor(reverse, device=states.device)
        logp = _log_softmax(model(z[idx]))  # (R, L, m): one call for every chosen reverse transition
        p = torch.tensor(
            [unmask_probability(schedule, *ops[flat[i]][1:]) for i in reverse], dtype=torch.float64
        )
        parts.append((idx, _step_log_prob(logp, z[idx], z_next[idx], p, logp.shape[-1])))  # (R,)
    mask_id = _mask_id(model)
    for c in sorted({flat[i] for i in remask}):  # parameter-free forward halves, one law per op
        idx = torch.tensor([i for i in remask if flat[i] == c], device=states.device)
        parts.append((idx, remask_step(z[idx], *ops[c][1:], schedule, mask_id, z_next=z_next[idx]).log_prob))
    dtype = max((v.dtype for _, v in parts), key=lambda d: torch.finfo(d).bits)
    out = torch.zeros(n * k, dtype=dtype, device=states.device)
    for idx, values in parts:
        out = out.index_put((idx,), values.to(dtype))  # out of place: the gradient flows to every part
    return out.reshape(n, k)
