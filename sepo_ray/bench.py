"""Benchmarks, printed as JSON: ``python -m sepo_ray.bench [--only A,B] [--output FILE] [--seeds N] [--quick]``.

A registry maps a name to a function ``fn(args) -> dict`` (JSON-able); each entry's result also records the
machine (CPU model, cores, torch threads, GPU if any) and its wall time; ``--quick`` (or SEPO_BENCH_QUICK=1)
shrinks every size for a smoke run. Timings are ratios measured side by side in one run (interleaved
repeats, medians, torch on one thread), so that a loaded machine moves both sides alike; each timing entry
also records the 1-minute load average at its start and carries a ``note`` saying what would move it.
Entries (add one with ``@register("name")``):

- ``fidelity``: gradient fidelity of the SEPO estimators on the exact toy (below);
- ``sampler_overhead``: T-step sampling time / (T x one denoiser forward at the same batch);
- ``learner_forwards_per_update``: denoiser forwards per update of our learner and of the published code's
  scheme (github.com/ozekri/SEPO) at equal B, G, M and epochs, counted by a wrapper on every denoiser and
  checked against formulas (DNA scale on a shape-only stand-in network, toy scale on the toy generator), the
  learner time ratio measured side by side (toy scale on a CPU; also DNA scale when a GPU is present) and
  the paired gradient fidelity of the two estimators (our default vs. theirs) from the fidelity machinery;
- ``ray_overhead``: rollout throughput through an EnvRunner + the reward-oracle actor / the same module and
  reward in-process; ``rollout_scaling``: throughput of 2 EnvRunners / (2 x one), the same Ray session;
- ``gpu_throughput``: sequences/s of the DRAKES-size generator (hidden 128, 4 stacks, L = 200, T = 128) at
  the best batch, fp32 / tf32 / bf16 (``{"skipped": "no GPU"}`` without one).

``fidelity`` (DESIGN "Exact check"): on an exactly enumerable toy (m = 3 tokens, L = 4, T = 4 steps, a small
MLP denoiser pretrained with the MDLM loss on a random target law) it reports

- ``exact_identity_max_rel_err``: max relative error between grad of the SEPO loss fed with exact pi and exact
  log-ratios over all y != x (x enumerated) and autograd's -grad E_pi[R], on- and off-policy (Thm 3.1, 3.2);
- ``fidelity`` / ``fidelity_offpolicy``: mean and standard error over seeds of the cosine similarity between
  an estimator's gradient of E[R] (one batch of N sampled x) and the exact gradient. Rows
  "<score>/<pi_hat>/<neighbours>": score in {clean, conditional, exact_ratio}, pi_hat in {none (single
  parent q(y|x)), snisM, exact_pi, uniform}, neighbours in {all (Hamming-1), k2 (K = 2 positions, weight
  L/K), every (all y != x, exact rows only)}; "reinforce_traj" = sum over the sampler's recorded steps of
  grad log p_theta(transition) (DDPO / d1). Advantages: leave-one-out baseline over the batch,
  A_i = R_i - mean_{j != i} R_j (unbiased; GRPO's std scaling only rescales). Off-policy: one Adam step
  (lr 0.005, mean |log pi_theta(x)/pi_old(x)| about 0.1) on the exact objective moves theta_old to theta; x
  and paths come from theta_old, the ratio is clipped at eps = 0.2 (App. B.1 coefficient) and the target is the
  exact grad at theta. SNIS draws for theta and theta_old share their random numbers (same sites);
- ``fidelity_expected``: the same rows with x enumerated and weighted by pi(x) (no batch noise): the cosine of
  the estimator's expectation, i.e. its bias alone;
- ``fidelity_untrained_model``: on-policy rows for a randomly initialised denoiser (fewer seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict]] = {}


def register(name: str):
    """Decorator adding ``fn(args) -> dict`` to the registry under ``name``."""

    def wrap(fn):
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is already registered")
        BENCHMARKS[name] = fn
        return fn

    return wrap


def machine_info() -> dict:
    """CPU model, core count, torch version and GPU (if any) of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": gpu,
    }


# ----------------------------------------------------------------------------------------------------------
# fidelity
# ----------------------------------------------------------------------------------------------------------

FIDELITY_DEFAULTS = {
    "num_tokens": 3,
    "length": 4,
    "steps": 4,
    "batch": 32,
    "hidden": 32,
    "pretrain_iters": 150,
    "pretrain_batch": 128,
    "clip_eps": 0.2,
    "offpolicy_lr": 0.005,
}


def _flat(grads, params) -> torch.Tensor:
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def _grad(loss: torch.Tensor, params) -> torch.Tensor:
    return _flat(torch.autograd.grad(loss, params, allow_unused=True), params)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else 0.0


def make_fidelity_toy(seed: int, cfg: dict, pretrained: bool = True):
    """(model, rewards) for one seed: ToyDenoiser (float64) pretrained on a random target law, reward table."""
    from .sepo.toy import ToyDenoiser, pretrain_toy, toy_reward

    torch.manual_seed(seed)
    m, length = cfg["num_tokens"], cfg["length"]
    model = ToyDenoiser(m, length, hidden=cfg["hidden"])
    if pretrained:
        gen = torch.Generator().manual_seed(10_000 + seed)
        target = torch.softmax(1.5 * torch.randn(m**length, generator=gen, dtype=torch.float64), 0)
        pretrain_toy(model, target, iters=cfg["pretrain_iters"], seed=seed, batch=cfg["pretrain_batch"])
    return model, toy_reward(m, length, seed=seed)


def exact_identity_rel_err(model, rewards, steps: int, offpolicy: bool, corrector_steps: int = 0) -> float:
    """Relative error of the Thm 3.1 (on-policy) / Thm 3.2 (off-policy, unclipped) identity on the exact toy."""
    from .sepo import ppo_coefficients, ratio, sepo_loss
    from .sepo.toy import ExactToy

    params = list(model.parameters())
    old = copy.deepcopy(model)
    if offpolicy:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            for p in model.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    toy, toy_old = (
        ExactToy(model, steps, corrector_steps=corrector_steps),
        ExactToy(old, steps, corrector_steps=corrector_steps),
    )
    expected = -_grad((toy.pi() * rewards).sum(), params)
    log_pi = toy.log_pi()
    log_pi_old = toy_old.log_pi().detach()
    c = log_pi.shape[0]
    log_score = (log_pi[None, :] - log_pi[:, None]).unsqueeze(1)  # (C, 1, C)
    log_score_old = (log_pi_old[None, :] - log_pi_old[:, None]).unsqueeze(1)  # (C, 1, C)
    mask = ~torch.eye(c, dtype=torch.bool).unsqueeze(1)  # (C, 1, C)
    row = lambda v: v.view(1, 1, c).expand(c, 1, c)  # noqa: E731
    r = ratio(log_score, log_score_old, row(log_pi.detach()), row(log_pi_old))  # (C, 1, C)
    coef = ppo_coefficients(r, rewards, row(log_pi.exp().detach()), clip_eps=1e12)  # (C, 1, C)
    coef = coef * (log_pi_old.exp() * c).view(c, 1, 1)  # x enumerated, weighted by pi_old(x)
    loss, _ = sepo_loss(log_score, coef, mask)
    got = _grad(loss, params)
    return float((got - expected).norm() / expected.norm())


def _hamming_exact(toy, log_pi, x, positions):
    """Exact log pi(y) - log pi(x) and pi(y) for the (k, v) neighbours: (N, K, m) each; log-ratio has grad."""
    from .sepo import neighbours
    from .sepo.toy import encode

    y = neighbours(x, positions, toy.m)  # (N, K, m, L)
    log_ratio = log_pi[encode(y, toy.m)] - log_pi[encode(x, toy.m)].view(-1, 1, 1)  # (N, K, m)
    return log_ratio, log_pi[encode(y, toy.m)].detach().exp()


def _estimators(cfg: dict):
    """Row names of the fidelity table, in order."""
    rows = []
    for score in ("clean", "conditional"):
        for pi in ("none", "snis1", "snis4", "snis16"):
            for nb in ("all", "k2"):
                rows.append(f"{score}/{pi}/{nb}")
    rows += [
        "exact_ratio/exact_pi/all",
        "exact_ratio/uniform/all",
        "exact_ratio/snis4/all",
        "conditional/exact_pi/all",
        "exact_ratio/exact_pi/every",
        "reinforce_traj",
    ]
    return rows


def estimator_gradient(
    name: str, model, old, toy, toy_old, batch, advantages, cfg: dict, gen
) -> torch.Tensor:
    """Gradient estimate of E_{pi_theta}[R] (ascent direction, = -grad loss) from one batch sampled by `old`.

    batch: Sample from `old` with its path; advantages (N,). On-policy when model and old hold the same
    weights (ratio = 1 exactly).
    """
    from .diffusion import Path, score_path
    from .sepo import (
        log_scores,
        neighbour_mask,
        ppo_coefficients,
        ratio,
        sample_positions,
        sepo_loss,
        single_sample_log_pi,
        snis_log_pi,
    )
    from .sepo.toy import encode

    params = list(model.parameters())
    x = batch.x  # (N, L)
    n, length = x.shape
    m = model.num_tokens
    eps = cfg["clip_eps"]
    if name == "reinforce_traj":
        log_p = score_path(model, Path(batch.path.states, batch.path.ops))  # (N,)
        r = torch.exp(log_p.detach() - batch.log_prob)  # (N,)
        coef = torch.minimum(r.clamp(1 - eps, 1 + eps) * advantages, r * advantages)  # (N,)
        return -_grad(-(coef * log_p).mean(), params)
    score, pi_kind, nb = name.split("/")
    if nb == "every":  # all y != x, exact quantities
        log_pi, log_pi_old = toy.log_pi(), toy_old.log_pi().detach()
        c = log_pi.shape[0]
        ix = encode(x, m)  # (N,)
        log_score = (log_pi[None, :] - log_pi[ix][:, None]).unsqueeze(1)  # (N, 1, C)
        log_score_old = (log_pi_old[None, :] - log_pi_old[ix][:, None]).unsqueeze(1)  # (N, 1, C)
        mask = (torch.arange(c)[None, :] != ix[:, None]).unsqueeze(1)  # (N, 1, C)
        lp_new = log_pi.detach().view(1, 1, c).expand(n, 1, c)
        lp_old = log_pi_old.view(1, 1, c).expand(n, 1, c)
        r = ratio(log_score, log_score_old, lp_new, lp_old)
        coef = ppo_coefficients(r, advantages, lp_new.exp(), eps)
        loss, _ = sepo_loss(log_score, coef, mask)
        return -_grad(loss, params)
    positions, weight = sample_positions(n, length, None if nb == "all" else 2, gen)
    mask = neighbour_mask(x, positions, m)  # (N, K, m)
    if score == "exact_ratio":
        log_pi, log_pi_old = toy.log_pi(), toy_old.log_pi().detach()
        log_score, pi_exact = _hamming_exact(toy, log_pi, x, positions)
        log_score_old, pi_exact_old = _hamming_exact(toy_old, log_pi_old, x, positions)
    else:
        log_score = log_scores(model, x, positions, score)  # (N, K, m)
        with torch.no_grad():
            log_score_old = log_scores(old, x, positions, score)
    if pi_kind in ("exact_pi", "uniform"):
        if score != "exact_ratio":
            _, pi_exact = _hamming_exact(toy, toy.log_pi().detach(), x, positions)
            _, pi_exact_old = _hamming_exact(toy_old, toy_old.log_pi().detach(), x, positions)
        lp_new, lp_old = pi_exact.log(), pi_exact_old.log()
    elif pi_kind == "none":
        est = "conditional" if score == "exact_ratio" else score
        lp_new = single_sample_log_pi(model, x, positions, est)
        lp_old = single_sample_log_pi(old, x, positions, est)
    else:  # common random numbers: the same SNIS sites for the new and the old policy
        num = int(pi_kind.removeprefix("snis"))
        est = "conditional" if score == "exact_ratio" else score
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        lp_new = snis_log_pi(model, x, positions, num, est, torch.Generator().manual_seed(seed))
        lp_old = snis_log_pi(old, x, positions, num, est, torch.Generator().manual_seed(seed))
    r = ratio(log_score, log_score_old, lp_new, lp_old)  # (N, K, m)
    weight_y = torch.ones_like(lp_new) if pi_kind == "uniform" else lp_new.exp()  # (N, K, m)
    coef = ppo_coefficients(r, advantages, weight_y, eps)  # (N, K, m)
    loss, _ = sepo_loss(log_score, coef, mask, position_weight=weight)
    return -_grad(loss, params)


def fidelity_seed(seed: int, cfg: dict, rows: list[str], pretrained: bool = True) -> dict:
    """Cosines for one seed: {"onpolicy": {row: cos}, "offpolicy": {row: cos}, "identity": [rel errs], ...}."""
    from .diffusion import Sample, sample
    from .sepo import leave_one_out_advantages
    from .sepo.toy import ExactToy, encode

    model, rewards = make_fidelity_toy(seed, cfg, pretrained)
    steps = cfg["steps"]
    out = {"identity": []}
    out["identity"].append(exact_identity_rel_err(copy.deepcopy(model), rewards, steps, offpolicy=False))
    out["identity"].append(exact_identity_rel_err(copy.deepcopy(model), rewards, steps, offpolicy=True))
    old = copy.deepcopy(model)
    for p in old.parameters():
        p.requires_grad_(False)
    toy_old = ExactToy(old, steps)
    gen = torch.Generator().manual_seed(seed)
    batch = sample(old, cfg["batch"], cfg["length"], steps, generator=gen, record_path=True)
    adv = leave_one_out_advantages(rewards[encode(batch.x, cfg["num_tokens"])])  # (N,)
    clean = toy_old.clean  # (C, L)
    pi_old = toy_old.pi()  # (C,)
    everything = Sample(x=clean, log_prob=torch.zeros(len(clean), dtype=torch.float64))
    # x enumerated with weight pi(x): A = C pi(x) (R(x) - E R) makes the batch mean the exact expectation
    adv_all = len(clean) * pi_old * (rewards - (pi_old * rewards).sum())  # (C,)
    for regime in ("onpolicy", "offpolicy", "expected"):
        theta = copy.deepcopy(model)
        params = list(theta.parameters())
        toy = ExactToy(theta, steps)
        if regime == "offpolicy":
            opt = torch.optim.Adam(params, lr=cfg["offpolicy_lr"])
            opt.zero_grad()
            (-(toy.pi() * rewards).sum()).backward()
            opt.step()
            with torch.no_grad():
                log_r = toy.log_pi() - toy_old.log_pi()
                out["offpolicy_mean_abs_log_ratio"] = float((toy_old.pi() * log_r.abs()).sum())
        exact = _grad((toy.pi() * rewards).sum(), params)
        cos = {}
        for name in rows:
            if regime == "expected":
                if name == "reinforce_traj":
                    continue  # unbiased by construction: its expectation is the exact gradient
                est = estimator_gradient(name, theta, old, toy, toy_old, everything, adv_all, cfg, gen)
            else:
                est = estimator_gradient(name, theta, old, toy, toy_old, batch, adv, cfg, gen)
            cos[name] = _cosine(est, exact)
        out[regime] = cos
    return out


def _mean_sem(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": round(mean, 4), "sem": round(math.sqrt(var / n), 4)}


_FIDELITY_PER_SEED: dict[tuple, list[dict]] = {}  # per-seed cosines of the runs made in this process


def run_fidelity(seeds: int = 20, cfg: dict | None = None, pretrained: bool = True) -> dict:
    """The fidelity table over `seeds` seeds (see module docstring)."""
    cfg = {**FIDELITY_DEFAULTS, **(cfg or {})}
    rows = _estimators(cfg)
    per_seed = [fidelity_seed(seed, cfg, rows, pretrained) for seed in range(seeds)]
    _FIDELITY_PER_SEED[(seeds, pretrained, json.dumps(cfg, sort_keys=True))] = per_seed
    identity = [e for s in per_seed for e in s["identity"]]
    # the identity with correctors on a second toy shape
    from .sepo.toy import ToyDenoiser, toy_reward

    torch.manual_seed(0)
    extra = ToyDenoiser(2, 3)
    identity.append(exact_identity_rel_err(extra, toy_reward(2, 3), 3, offpolicy=True, corrector_steps=1))
    return {
        "exact_identity_max_rel_err": max(identity),
        "fidelity": {row: _mean_sem([s["onpolicy"][row] for s in per_seed]) for row in rows},
        "fidelity_offpolicy": {row: _mean_sem([s["offpolicy"][row] for s in per_seed]) for row in rows},
        "fidelity_expected": {
            row: _mean_sem([s["expected"][row] for s in per_seed]) for row in rows if row != "reinforce_traj"
        },
        "offpolicy_mean_abs_log_ratio": _mean_sem([s["offpolicy_mean_abs_log_ratio"] for s in per_seed]),
        "seeds": seeds,
        "settings": {**cfg, "pretrained": pretrained, "advantages": "leave-one-out", "metric": "cosine"},
    }


@register("fidelity")
def fidelity(args: argparse.Namespace) -> dict:
    """Gradient fidelity of the SEPO estimators on the exact toy (module docstring)."""
    seeds = args.seeds if getattr(args, "seeds", None) else 20
    result = run_fidelity(seeds)
    untrained = run_fidelity(max(4, seeds // 4), pretrained=False)
    result["fidelity_untrained_model"] = untrained["fidelity"]
    result["untrained_seeds"] = untrained["seeds"]
    return result


# ----------------------------------------------------------------------------------------------------------
# helpers shared by the timing entries
# ----------------------------------------------------------------------------------------------------------

QUICK_ENV = "SEPO_BENCH_QUICK"


def is_quick(args: argparse.Namespace) -> bool:
    """``--quick`` or ``SEPO_BENCH_QUICK=1``: tiny sizes, a smoke run of every entry (figures not meaningful)."""
    return bool(getattr(args, "quick", False)) or os.environ.get(QUICK_ENV, "") not in ("", "0")


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _seconds(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall-clock seconds of fn() (the device synchronised before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _summary(values: list[float], digits: int = 5) -> dict:
    """median / min / max of repeated timings (seconds) and the runs themselves, in the order taken."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


@dataclass
class ForwardTally:
    """Denoiser forward passes: calls, sequences forwarded (rows) and rows forwarded with gradient."""

    calls: int = 0
    rows: int = 0
    grad_rows: int = 0

    def add(self, rows: int, grad: bool) -> None:
        self.calls += 1
        self.rows += rows
        self.grad_rows += rows if grad else 0

    def reset(self) -> None:
        self.calls = self.rows = self.grad_rows = 0

    def snapshot(self) -> dict:
        return {"calls": self.calls, "rows": self.rows, "grad_rows": self.grad_rows}


class CountingDenoiser(nn.Module):
    """Forwards to ``model`` and adds every call to ``tally`` (rows = z.shape[0]; grad if autograd records it)."""

    def __init__(self, model: nn.Module, tally: ForwardTally):
        super().__init__()
        self.model = model
        self.tally = tally
        self.num_tokens = int(model.num_tokens)
        self.mask_id = int(getattr(model, "mask_id", model.num_tokens))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.model.parameters())
        self.tally.add(int(z.shape[0]), grad)
        return self.model(z)  # (B, L, m)


class ShapeOnlyDenoiser(nn.Module):
    """Logits of the right shape, (B, L, m), at almost no cost, with one parameter so that backward runs.

    How many forwards an update makes does not depend on the network, so DNA-scale counts need no DNA-scale
    compute: the counts are taken on this stand-in and the timings on the real networks.
    """

    def __init__(self, num_tokens: int = 4):
        super().__init__()
        self.num_tokens = self.mask_id = int(num_tokens)
        self.bias = nn.Parameter(torch.zeros(num_tokens))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(z.shape[0], z.shape[1], self.num_tokens)  # (B, L, m)


def _frozen_copy(model: nn.Module) -> nn.Module:
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def _generator(device: torch.device | str, seed: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def _toy_generator() -> nn.Module:
    """The "toy" task's generator (DNAConvDenoiser, hidden 16, 1 stack; seeded)."""
    from .tasks import get_task

    return get_task("toy").build_denoiser(None)


def _dna_conv(hidden: int, stacks: int, seed: int = 0) -> nn.Module:
    """A randomly initialised DNAConvDenoiser (speed does not depend on the weights)."""
    from .models.dnaconv import DNAConvDenoiser

    torch.manual_seed(seed)
    return DNAConvDenoiser(hidden_dim=hidden, num_cnn_stacks=stacks, num_tokens=4)


# ----------------------------------------------------------------------------------------------------------
# sampler_overhead
# ----------------------------------------------------------------------------------------------------------


def sampler_overhead_row(
    model: nn.Module, batch: int, length: int, steps: int, repeats: int, forwards: int, seed: int = 0
) -> dict:
    """T-step sampling time / (T x one denoiser forward at the same batch), paired per repeat, median.

    Each repeat times one `diffusion.sample` call and then `forwards` forwards of the denoiser on a fully
    masked (batch, L) input (the CNN's cost does not depend on the tokens); the row's ratio is the median of
    the per-repeat ratios. The forward calls the sampler makes are counted once, with a `CountingDenoiser`.
    """
    from .diffusion import sample

    model = model.eval()
    z = torch.full((batch, length), model.num_tokens, dtype=torch.long)  # (B, L) all MASK
    gen = torch.Generator().manual_seed(seed)
    tally = ForwardTally()
    with torch.no_grad():
        sample(CountingDenoiser(model, tally), batch, length, steps, generator=gen)
        model(z)  # warm-up
        sample_s, forward_s, ratios = [], [], []
        for _ in range(repeats):
            t_sample = _seconds(lambda: sample(model, batch, length, steps, generator=gen))
            t_fwd = statistics.median(_seconds(lambda: model(z)) for _ in range(forwards))
            sample_s.append(t_sample)
            forward_s.append(t_fwd)
            ratios.append(t_sample / (steps * t_fwd))
    t_sample, t_fwd = statistics.median(sample_s), statistics.median(forward_s)
    return {
        "ratio": round(statistics.median(ratios), 4),
        "per_step_overhead_ms": round(1e3 * (t_sample - steps * t_fwd) / steps, 4),
        "sample_s": _summary(sample_s),
        "forward_s": _summary(forward_s),
        "sampler_forward_calls": tally.calls,
        "sampler_forward_rows": tally.rows,
        "settings": {
            "batch": batch,
            "length": length,
            "steps": steps,
            "repeats": repeats,
            "forwards_per_repeat": forwards,
            "model": getattr(model, "config", type(model).__name__),
        },
    }


@register("sampler_overhead")
def sampler_overhead(args: argparse.Namespace) -> dict:
    """Sampler bookkeeping overhead over the bare denoiser forwards, for a CNN of the DNA size and for the toy."""
    quick = is_quick(args)
    rows = {}
    load = _load_avg()
    if quick:
        rows["dna_shipped_size"] = sampler_overhead_row(_dna_conv(16, 1), 4, 32, 4, repeats=2, forwards=2)
        rows["toy"] = sampler_overhead_row(_toy_generator(), 8, 16, 4, repeats=2, forwards=2)
    else:
        rows["dna_shipped_size"] = sampler_overhead_row(_dna_conv(64, 2), 16, 200, 16, repeats=3, forwards=5)
        rows["drakes_size"] = sampler_overhead_row(_dna_conv(128, 4), 4, 200, 8, repeats=3, forwards=5)
        rows["toy"] = sampler_overhead_row(_toy_generator(), 64, 16, 32, repeats=5, forwards=20)
    return {
        "ratio": {name: row["ratio"] for name, row in rows.items()},
        "rows": rows,
        "load_avg_1m_at_start": load,
        "quick": quick,
        "note": (
            "ratio = T-step sampling time / (T x one denoiser forward at the same batch); 1.0 = the sampler adds "
            "nothing to its T forwards (sampler_forward_calls = T, each of `batch` rows). per_step_overhead_ms is "
            "the absolute cost per step of the bookkeeping: log-softmax over (B, L, m), a float64 uniform (B, L) "
            "and a Gumbel draw (B, L, m), the unmask/where and the float64 log-prob of the step. It is a fixed cost "
            "per element of (B, L, m), so the ratio approaches 1 as the network grows (DNA sizes) and rises for "
            "tiny networks (toy). Moved by: network size vs. m (bigger network -> 1); correctors (c corrector "
            "steps add c remask + c forwards per step); on a GPU, kernel-launch latency at small batch (the "
            "bookkeeping is ~10 small kernels per step), which CUDA graphs or a fused step would remove."
        ),
    }


# ----------------------------------------------------------------------------------------------------------
# learner_forwards_per_update
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateSettings:
    """One SEPO batch and one update. Defaults: SEPOConfig's (checked in tests/test_bench.py), DNA length."""

    length: int = 200  # L
    num_tokens: int = 4  # m
    prompts: int = 4  # B, prompts per batch
    group_size: int = 8  # G, samples per prompt
    snis_samples: int = 1  # M, SNIS samples per neighbour (>= 1 here)
    positions: int | None = 2  # K, Hamming-1 positions per sequence (None = all L)
    epochs: int = 2  # E, epochs (= optimiser steps) per update
    kl_steps: int = 2  # S, sampler states per sequence for the path KL
    denoise_steps: int = 32  # T
    clip_eps: float = 0.2
    kl_alpha: float = 1.0
    chunk: int | None = None  # rows per model call in the batched forwards (None = one call)

    @property
    def batch(self) -> int:
        """N = B * G sequences per batch."""
        return self.prompts * self.group_size

    @property
    def num_positions(self) -> int:
        return self.length if self.positions is None else self.positions


def count_formulas(s: UpdateSettings) -> dict:
    """Denoiser forwards of each phase as formulas in N = B G, L, m, M, K, E, S, T, and their values.

    ours, learner (SEPOTorchLearner, per update of E epochs): conditional log-scores with grad, N K rows;
    SNIS pi_hat_theta, N K (m-1) M masked rows; path KL, N S rows of theta (grad) and N S of the reference.
    ours, rollout (SEPOTorchRLModule.generate, once per batch): sampler N rows x T calls; old log-scores N K;
    old SNIS pi_hat N K (m-1) M.
    published (per update of E epochs, G batches of B, clean score, all L positions, SNIS with the clean
    score: M masked forwards of y to draw z and M clean forwards of z per neighbour): per epoch and batch the
    old model's score B + old pi_hat 2 B L (m-1) M, the current model's score B (grad) + pi_hat 2 B L (m-1) M.
    published code as written (for the record): its neighbour set is all L (m+1) single-site changes (the
    token itself and MASK included), one forward per y to build q(z | y) and M forwards of the z.
    """
    if s.snis_samples < 1:
        raise ValueError(f"count_formulas needs snis_samples (M) >= 1, got {s.snis_samples}")
    n, b, g, length, m = s.batch, s.prompts, s.group_size, s.length, s.num_tokens
    big_m, k, e, st, t = s.snis_samples, s.num_positions, s.epochs, s.kl_steps, s.denoise_steps
    kl = s.kl_alpha > 0
    return {
        "ours_learner": {
            "rows": e * (n * k + n * k * (m - 1) * big_m + (2 * n * st if kl else 0)),
            "grad_rows": e * (n * k + (n * st if kl else 0)),
            "calls": e * (2 + (2 if kl else 0)),
            "formula": "E*(N*K + N*K*(m-1)*M" + (" + 2*N*S)" if kl else ")"),
            "grad_formula": "E*(N*K" + (" + N*S)" if kl else ")"),
        },
        "ours_rollout_old_policy": {
            "rows": n * k + n * k * (m - 1) * big_m,
            "grad_rows": 0,
            "calls": 2,
            "formula": "N*K + N*K*(m-1)*M",
        },
        "ours_rollout_sampler": {"rows": n * t, "grad_rows": 0, "calls": t, "formula": "N*T"},
        "published_learner": {
            "rows": e * (2 * n + 4 * n * length * (m - 1) * big_m),
            "grad_rows": e * n,
            "calls": e * g * 6,
            "formula": "E*(2*N + 4*N*L*(m-1)*M)",
            "grad_formula": "E*N",
        },
        "published_code_as_written": {
            "rows": e * (2 * n + 2 * n * length * (m + 1) * (1 + big_m)),
            "formula": "E*(2*N + 2*N*L*(m+1)*(1+M))",
            "not_counted_per_update": {
                "rows": e * b * t,
                "formula": "E*B*T",
                "what": "a fresh batch of B sampled every epoch for the logged reward (and the KL states when "
                "put_kl=1, which adds 2 forwards per KL state); left out here, which favours the published scheme",
            },
        },
    }


def _rewards_advantages(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO advantages of the toy reward (fraction of token 0) for consecutive groups of G: (N, L) -> (N,)."""
    from .sepo import group_advantages

    rewards = (x == 0).double().mean(dim=1)  # (N,)
    return group_advantages(rewards, group_size)  # (N,)


@torch.no_grad()
def rollout_sample(model: nn.Module, s: UpdateSettings, gen: torch.Generator) -> dict:
    """The sampler half of SEPOTorchRLModule.generate: x (N, L) and the S recorded states for the KL."""
    from .diffusion import LogLinearSchedule, sample

    n = s.batch
    kl_steps = torch.randperm(s.denoise_steps, generator=gen, device=gen.device)[: s.kl_steps] + 1  # (S,)
    out = sample(
        model, n, s.length, s.denoise_steps, LogLinearSchedule(), generator=gen, record_states_at=kl_steps
    )
    return {"x": out.x, "kl_states": out.states, "kl_steps": kl_steps.expand(n, -1).clone()}  # (N, L) ...


@torch.no_grad()
def rollout_old_policy(model: nn.Module, batch: dict, s: UpdateSettings, gen: torch.Generator) -> dict:
    """The old-policy half of SEPOTorchRLModule.generate (same calls, same arguments), once per batch."""
    from . import sepo

    x = batch["x"]  # (N, L)
    n, length = x.shape
    m, big_m = s.num_tokens, s.snis_samples
    positions, _ = sepo.sample_positions(n, length, s.positions, generator=gen, device=x.device)  # (N, K)
    old_log_scores = sepo.log_scores(model, x, positions, "conditional", batch_size=s.chunk)  # (N, K, m)
    sites = sepo.draw_snis_sites(positions, m, big_m, length, generator=gen)  # (N, K, m-1, M)
    old_log_pi_hat = sepo.log_pi_hat(
        model, x, positions, big_m, "conditional", generator=gen, batch_size=s.chunk, sites=sites
    )  # (N, K, m)
    return {
        **batch,
        "positions": positions,
        "old_log_scores": old_log_scores,
        "old_log_pi_hat": old_log_pi_hat,
        "snis_sites": sites,
        "advantages": _rewards_advantages(x, s.group_size),
    }


def _optimiser_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    """RLlib's TorchLearner step: backward, clip the global grad norm at 1 (SEPOConfig.grad_clip), step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def ours_update(
    model: nn.Module,
    ref: nn.Module,
    batch: dict,
    s: UpdateSettings,
    optimizer: torch.optim.Optimizer,
    noise: torch.Generator,
) -> None:
    """One learner update (E epochs): SEPOTorchLearner's SEPO loss + path KL calls with their arguments."""
    from . import sepo
    from .diffusion import LogLinearSchedule

    x, positions = batch["x"], batch["positions"]  # (N, L), (N, K)
    length, k = x.shape[1], positions.shape[1]
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(s.epochs):
        log_score = sepo.log_scores(model, x, positions, "conditional", batch_size=s.chunk)  # (N, K, m), grad
        with torch.no_grad():
            log_pi_hat = sepo.log_pi_hat(
                model,
                x,
                positions,
                s.snis_samples,
                "conditional",
                generator=noise,
                batch_size=s.chunk,
                sites=batch["snis_sites"],  # the rollout's sites: common random numbers
            )  # (N, K, m)
            r = sepo.ratio(log_score.detach(), batch["old_log_scores"], log_pi_hat, batch["old_log_pi_hat"])
            coefficients = sepo.ppo_coefficients(
                r, batch["advantages"], log_pi_hat.exp(), s.clip_eps, zero_clipped=True
            )  # (N, K, m)
            mask = sepo.neighbour_mask(x, positions, s.num_tokens)  # (N, K, m)
        loss, _ = sepo.sepo_loss(
            log_score, coefficients, mask, position_weight=length / k, ratio=r, clip_eps=s.clip_eps
        )
        if s.kl_alpha > 0:
            kl = sepo.kl_to_reference(
                model, ref, batch["kl_states"], batch["kl_steps"], s.denoise_steps, LogLinearSchedule()
            ).mean()
            loss = loss + s.kl_alpha * kl
        _optimiser_step(optimizer, loss, params)


def published_update(
    model: nn.Module,
    old: nn.Module,
    batch: dict,
    s: UpdateSettings,
    optimizer: torch.optim.Optimizer,
    noise: torch.Generator,
) -> None:
    """The published code's update scheme (github.com/ozekri/SEPO, GRPO_MDLM_DNA), rebuilt from our functions.

    Their ``fine_tune`` loop, per update of E epochs (``mu_grpo``), one optimiser step per epoch; in each epoch,
    for each of the G sampled batches of B sequences: the old model's clean score (one forward of B) and its
    SNIS pi_hat over every Hamming-1 neighbour, both recomputed every epoch; the current model's clean score
    with gradient and its SNIS pi_hat over every neighbour (``_compute_loss_sepo`` -> ``_compute_pi_y``).
    Scores: ``log_scores(..., "clean")`` at all L positions; pi_hat: ``snis_log_pi(..., "clean")`` (M masked
    forwards of y to draw z, M clean forwards of z for 1/s(z)_y, per neighbour). The loss uses our coefficient
    function (their batch-level min of two sums is the same tensor work).
    """
    from . import sepo

    b, g, length = s.prompts, s.group_size, s.length
    xs = batch["x"].view(b, g, length).transpose(0, 1)  # (G, B, L): their G batches; a group is a column
    adv = batch["advantages"].view(b, g).transpose(0, 1)  # (G, B)
    positions, _ = sepo.sample_positions(b, length, None, device=xs.device)  # (B, L): every position
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(s.epochs):
        total = torch.zeros((), device=xs.device)
        for i in range(g):
            x = xs[i].contiguous()  # (B, L)
            with torch.no_grad():
                log_score_old = sepo.log_scores(old, x, positions, "clean", batch_size=s.chunk)  # (B, L, m)
                log_pi_old = sepo.snis_log_pi(old, x, positions, s.snis_samples, "clean", noise, s.chunk)
            log_score = sepo.log_scores(model, x, positions, "clean", batch_size=s.chunk)  # (B, L, m), grad
            log_pi = sepo.snis_log_pi(model, x, positions, s.snis_samples, "clean", noise, s.chunk)
            r = sepo.ratio(log_score.detach(), log_score_old, log_pi, log_pi_old)  # (B, L, m)
            coefficients = sepo.ppo_coefficients(r, adv[i], log_pi.exp(), s.clip_eps)  # (B, L, m)
            mask = sepo.neighbour_mask(x, positions, s.num_tokens)  # (B, L, m)
            loss, _ = sepo.sepo_loss(log_score, coefficients, mask)
            total = total + loss
        _optimiser_step(optimizer, total / g, params)


def learner_comparison(
    base: nn.Module,
    s: UpdateSettings,
    repeats: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    timed: bool = True,
) -> dict:
    """Counts (and, if `timed`, times) one batch: rollout sampler, old-policy pass, ours and published updates.

    Every denoiser (trainable, frozen KL reference, published old model) is wrapped in a `CountingDenoiser`
    sharing one tally; counts are per update (E epochs) and per batch. Timings alternate the two schemes over
    `repeats` rounds (each scheme keeps its own weights and Adam state) and report medians.
    """
    tally = ForwardTally()
    base = base.to(device)
    ours = CountingDenoiser(copy.deepcopy(base).train(), tally)
    ref = CountingDenoiser(_frozen_copy(base), tally)
    published = CountingDenoiser(copy.deepcopy(base).train(), tally)
    published_old = CountingDenoiser(_frozen_copy(base), tally)
    gen, noise = _generator(device, seed), _generator(device, seed + 1)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=1e-4)
    opt_published = torch.optim.Adam(published.parameters(), lr=1e-4)

    counts = {}
    tally.reset()
    held = {}
    sampler_s = _seconds(lambda: held.update(batch=rollout_sample(ours, s, gen)), device)
    batch = held["batch"]
    counts["ours_rollout_sampler"] = tally.snapshot()
    tally.reset()
    batch = rollout_old_policy(ours, batch, s, gen)
    counts["ours_rollout_old_policy"] = tally.snapshot()

    runs = {"ours_learner": [], "published_learner": [], "ours_rollout_old_policy": []}
    jobs = {
        "ours_learner": lambda: ours_update(ours, ref, batch, s, opt_ours, noise),
        "published_learner": lambda: published_update(
            published, published_old, batch, s, opt_published, noise
        ),
        "ours_rollout_old_policy": lambda: rollout_old_policy(ours, batch, s, gen),
    }
    order = list(jobs)
    for rep in range(repeats if timed else 1):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate who goes first
            tally.reset()
            runs[name].append(_seconds(jobs[name], device))
            counts.setdefault(name, tally.snapshot())  # the same every round
    out = {"counts": counts}
    if timed:
        med = {name: statistics.median(v) for name, v in runs.items()}
        out["seconds"] = {name: _summary(v) for name, v in runs.items()}
        out["seconds"]["ours_rollout_sampler_once"] = round(sampler_s, 5)
        out["learner_time_ratio"] = round(med["published_learner"] / med["ours_learner"], 3)
        out["learner_time_ratio_incl_old_policy"] = round(
            med["published_learner"] / (med["ours_learner"] + med["ours_rollout_old_policy"]), 3
        )
    return out


FIDELITY_COMPARISON = {
    "ours": "conditional/snis{M}/k2",
    "published": "clean/snis{M}/all",
    "ours_all_positions": "conditional/snis{M}/all",
}


def _verdict(diff: dict) -> str:
    if diff["mean"] - 2 * diff["sem"] > 0:
        return "ours better (paired difference > 2 standard errors)"
    if diff["mean"] + 2 * diff["sem"] >= 0:
        return "equal within 2 standard errors (paired)"
    return "ours worse (paired difference < -2 standard errors)"


def fidelity_comparison(snis_samples: int, seeds: int, quick: bool) -> dict:
    """Paired cosine-to-exact-gradient of our default estimator vs. the published one, on the exact toy.

    Reuses the per-seed rows of a `fidelity` run made earlier in this process (same seeds, all rows), or runs
    `fidelity_seed` on `seeds` seeds for the compared rows only.
    """
    rows = {key: name.format(M=snis_samples) for key, name in FIDELITY_COMPARISON.items()}
    cfg = dict(FIDELITY_DEFAULTS)
    if quick:
        cfg.update(pretrain_iters=20, length=3, steps=3)
    per_seed, source = None, None
    if not quick:
        cached = [
            (key[0], v)
            for key, v in _FIDELITY_PER_SEED.items()
            if key[1]
            and key[2] == json.dumps(cfg, sort_keys=True)
            and all(r in v[0]["onpolicy"] for r in rows.values())
        ]
        if cached:
            n, per_seed = max(cached, key=lambda kv: kv[0])
            source = f"the fidelity entry of this run ({n} seeds, every row)"
    if per_seed is None:
        if rows["ours"] not in _estimators(cfg):
            return {"skipped": f"the fidelity table has no row {rows['ours']!r} (M = {snis_samples})"}
        per_seed = [fidelity_seed(seed, cfg, list(rows.values())) for seed in range(seeds)]
        source = f"fidelity_seed on seeds 0..{seeds - 1}, compared rows only"
    out = {
        "rows": rows,
        "source": source,
        "settings": {k: cfg[k] for k in ("num_tokens", "length", "steps", "batch")},
    }
    for regime in ("onpolicy", "offpolicy", "expected"):
        vals = {key: [s[regime][row] for s in per_seed] for key, row in rows.items()}
        diff = _mean_sem([a - b for a, b in zip(vals["ours"], vals["published"])])
        out[regime] = {
            **{key: _mean_sem(v) for key, v in vals.items()},
            "ours_minus_published": diff,
            "verdict": _verdict(diff),
        }
    return out


def _settings_from_config() -> dict:
    """SEPOConfig's defaults that the update depends on (B, G, M, K, E, S, T, eps, alpha)."""
    from .rllib.config import SEPOConfig

    c = SEPOConfig()
    return {
        "prompts": c.prompts_per_batch,
        "group_size": c.group_size,
        "snis_samples": c.snis_samples,
        "positions": c.neighbour_positions,
        "epochs": c.num_epochs,
        "kl_steps": c.kl_steps,
        "denoise_steps": c.denoise_steps,
        "clip_eps": c.clip_eps,
        "kl_alpha": c.kl_alpha,
    }


def _counts_block(result: dict, s: UpdateSettings) -> dict:
    """Measured counts next to their formulas, and the ratios published / ours."""
    formulas = count_formulas(s)
    counts = result["counts"]
    block = {}
    for name, measured in counts.items():
        f = formulas[name]
        block[name] = {
            **measured,
            "formula": f["formula"],
            "formula_rows": f["rows"],
            "formula_grad_rows": f["grad_rows"],
            "formula_calls": f["calls"],
            "matches_formula": measured["rows"] == f["rows"]
            and measured["grad_rows"] == f["grad_rows"]
            and measured["calls"] == f["calls"],
        }
    block["published_code_as_written"] = formulas["published_code_as_written"]
    ours, old, pub = counts["ours_learner"], counts["ours_rollout_old_policy"], counts["published_learner"]
    block["forwards_ratio_published_over_ours_learner"] = round(pub["rows"] / ours["rows"], 2)
    block["forwards_ratio_published_over_ours_learner_plus_old_policy"] = round(
        pub["rows"] / (ours["rows"] + old["rows"]), 2
    )
    block["forwards_ratio_published_as_written_over_ours_learner"] = round(
        formulas["published_code_as_written"]["rows"] / ours["rows"], 2
    )
    return block


@register("learner_forwards_per_update")
def learner_forwards_per_update(args: argparse.Namespace) -> dict:
    """Denoiser forwards per SEPO update, ours vs. the published scheme (counted), their time ratio, fidelity."""
    quick = is_quick(args)
    load = _load_avg()
    if quick:
        dna = UpdateSettings(
            length=24, prompts=2, group_size=2, epochs=2, snis_samples=4, kl_steps=2, denoise_steps=4
        )
        toy = replace(dna, length=8)
        repeats = 2
    else:
        dna = UpdateSettings(length=200, **_settings_from_config())
        toy = replace(dna, length=16)
        repeats = 3
    # DNA scale, counts only (stand-in network); toy scale, counted and timed on the toy generator
    dna_result = learner_comparison(ShapeOnlyDenoiser(dna.num_tokens), dna, repeats=1, timed=False)
    toy_result = learner_comparison(_toy_generator(), toy, repeats=repeats)
    out = {
        "counts_dna": _counts_block(dna_result, dna),
        "counts_toy": _counts_block(toy_result, toy),
        "learner_time_ratio": {
            "published_over_ours": toy_result["learner_time_ratio"],
            "published_over_ours_incl_old_policy": toy_result["learner_time_ratio_incl_old_policy"],
            "scale": "toy: L = 16, the toy task's generator (DNAConvDenoiser hidden 16, 1 stack), CPU",
            "seconds": toy_result["seconds"],
        },
        "settings_dna": asdict(dna),
        "settings_toy": asdict(toy),
    }
    if torch.cuda.is_available() and not quick:
        gpu = replace(dna, chunk=4096)
        res = learner_comparison(_dna_conv(64, 2), gpu, repeats=2, device="cuda")
        out["learner_time_ratio_dna_gpu"] = {
            "published_over_ours": res["learner_time_ratio"],
            "published_over_ours_incl_old_policy": res["learner_time_ratio_incl_old_policy"],
            "scale": "DNA: L = 200, DNAConvDenoiser hidden 64, 2 stacks (the shipped generator's size), fp32",
            "seconds": res["seconds"],
            "counts_match_cpu": res["counts"] == dna_result["counts"],
        }
    seeds = 2 if quick else (args.seeds if getattr(args, "seeds", None) else 20)
    out["gradient_fidelity"] = fidelity_comparison(dna.snis_samples, seeds, quick)
    if "skipped" not in out["gradient_fidelity"]:
        out["learner_time_ratio"]["gradient_fidelity_ours_vs_published"] = {
            regime: out["gradient_fidelity"][regime]["verdict"]
            for regime in ("onpolicy", "offpolicy", "expected")
        }
    out["load_avg_1m_at_start"] = load
    out["quick"] = quick
    out["note"] = (
        "Counts are per update (E epochs) and per batch of N = B*G sequences, taken with a counting wrapper on "
        "every denoiser (trainable, frozen reference, published old model) and checked against the formulas. "
        "Ours: the learner recomputes per epoch only what depends on theta (conditional log-scores at K positions "
        "with grad, SNIS pi_hat_theta at the K (m-1) neighbours, the path KL on S states for theta and the "
        "reference); the old-policy quantities are computed once per batch in the rollout worker "
        "(ours_rollout_old_policy), which scales out with the workers. Published: per epoch and per sampled batch, "
        "the old model's score and pi_hat over all L (m-1) neighbours are recomputed, then the current model's; "
        "its forwards grow with L (m-1) M per sequence per epoch, ours with K (m-1) M. The ratio is "
        "4 L (m-1) M / (K (1 + (m-1) M) + 2 S) at large L (~282 at the DNA defaults, ~23 at L = 16). "
        "learner_time_ratio is measured side by side only at the toy scale on this CPU (the published update at "
        "DNA scale is ~1.2M sequence-forwards of a 200-bp CNN, minutes to hours on a CPU); there the per-call "
        "overhead of our small batches keeps the time ratio below the count ratio; with a network whose forward "
        "dominates (DNA sizes, forward cost linear in rows), the time ratio tends to the rows ratio weighted "
        "by backward cost (grad rows cost ~3x). gradient_fidelity: cosine to the exact gradient on the "
        "enumerable toy (the fidelity entry), paired over seeds: our default (conditional score, K = 2 "
        "positions, SNIS M) vs. the published estimator (clean score, all neighbours, SNIS M); 'expected' is "
        "the bias-only cosine. Moved by: K and M (ours is linear in K M, theirs in L M), S and alpha (KL rows), "
        "E (both linear), the chunk size and batch per call (time, not counts)."
    )
    return out


# ----------------------------------------------------------------------------------------------------------
# ray_overhead and rollout_scaling (one Ray session, measured together)
# ----------------------------------------------------------------------------------------------------------

_RAY_RESULTS: dict[bool, dict] = {}


def _runner_sample(runner):
    """EnvRunner.sample() (module level: a foreach function must not capture an object holding the group)."""
    return runner.sample()


def _runner_threads(runner) -> int:
    return torch.get_num_threads()


def _runner_generate_s(runner) -> float:
    """Seconds of the RLModule's generate(n) timed inside the runner process (no RLlib loop, no transfer)."""
    n = int(runner.config.num_envs_per_env_runner)
    start = time.perf_counter()
    with torch.no_grad():
        runner.module.generate(n)
    return time.perf_counter() - start


def _completed(results) -> int:
    return sum(1 for episodes in results for e in episodes if len(e) > 0)


def ray_rollout_measurements(args: argparse.Namespace) -> dict:
    """Sequences/s through 2 EnvRunners + 1 reward-oracle actor vs. the same module and reward in-process.

    One SEPO algorithm, num_env_runners = 2 (num_cpus 1 each), oracle_actors = 1 (num_cpus 0), task "dna"
    with a random DNAConvDenoiser of the shipped size written to a temporary file as its generator and the
    in-process-importable reward ``sepo_ray.tasks:fraction_a``; each runner samples n = B G / 2 sequences per
    call. Per round (rotated order): the module's ``generate(n)`` + decode + reward in the driver; one
    runner alone (alternating 1 and 2); both runners at once; the reward actor's round trip on n sequences.
    """
    quick = is_quick(args)
    if quick in _RAY_RESULTS:
        return _RAY_RESULTS[quick]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import tempfile

    import numpy as np
    import ray
    from ray.rllib.core.columns import Columns

    from .models import save_model
    from .oracles.pool import RewardPool, resolve_reward
    from .rllib import SEPOConfig

    load = _load_avg()
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    if quick:
        hidden, stacks = 16, 1
        sepo_kw = dict(prompts_per_batch=2, group_size=2, denoise_steps=4, snis_samples=1, kl_steps=2)
        repeats = 1
    else:
        hidden, stacks = 64, 2
        sepo_kw = dict(prompts_per_batch=2, group_size=4, denoise_steps=16, snis_samples=4, kl_steps=2)
        repeats = 3
    reward_spec = "sepo_ray.tasks:fraction_a"
    tmp = tempfile.TemporaryDirectory()
    try:
        path = save_model(_dna_conv(hidden, stacks), os.path.join(tmp.name, "generator.safetensors"))
        config = (
            SEPOConfig()
            .sepo(task="dna", generator=str(path), reward=reward_spec, oracle_actors=1, **sepo_kw)
            .env_runners(num_env_runners=2, num_cpus_per_env_runner=1)
            .debugging(seed=0)
        )
        build_start = time.perf_counter()
        algo = config.build_algo()
        build_s = time.perf_counter() - build_start
        try:
            group = algo.env_runner_group
            n = algo.config.envs_per_runner
            module = algo.get_module()
            reward = resolve_reward(reward_spec)
            pool = RewardPool.connect(**algo.config.env_config["reward_pool"])
            lut = np.frombuffer(b"ACGT", dtype=np.uint8)

            def decode(x):
                return [row.tobytes().decode() for row in lut[x.numpy()]]

            def in_process():
                with torch.no_grad():
                    out = module.generate(n)
                reward(decode(out[Columns.ACTIONS]))

            seqs = decode(torch.randint(0, 4, (n, module.task.length)))
            counts: dict[str, list[int]] = {"single": [], "both": []}

            def via(ids, key):
                counts[key].append(
                    _completed(
                        group.foreach_env_runner(
                            _runner_sample, remote_worker_ids=ids, local_env_runner=False
                        )
                    )
                )

            threads = group.foreach_env_runner(_runner_threads, local_env_runner=False)
            in_process()  # warm-ups
            via([1], "single")
            via([2], "single")
            via([1, 2], "both")
            counts = {"single": [], "both": []}
            runs: dict[str, list[float]] = {
                "in_process": [],
                "single_runner": [],
                "both_runners": [],
                "reward_actor": [],
                "reward_in_process": [],
                "generate_inside_runner": [],
            }
            for rep in range(repeats):
                jobs = [
                    ("in_process", in_process),
                    ("single_runner", lambda rep=rep: via([1 + rep % 2], "single")),
                    ("both_runners", lambda: via([1, 2], "both")),
                    ("reward_actor", lambda: pool.score(seqs)),
                    ("reward_in_process", lambda: reward(seqs)),
                ]
                inside = group.foreach_env_runner(
                    _runner_generate_s, remote_worker_ids=[1 + rep % 2], local_env_runner=False
                )
                runs["generate_inside_runner"].append(inside[0])
                k = rep % 3
                for name, fn in jobs[k:3] + jobs[:k] + jobs[3:]:
                    runs[name].append(_seconds(fn))
        finally:
            algo.stop()
    finally:
        tmp.cleanup()
        if started:
            ray.shutdown()
    med = {k: statistics.median(v) for k, v in runs.items()}
    single_seqs = statistics.median(counts["single"])
    both_seqs = statistics.median(counts["both"])
    thr = {
        "in_process": n / med["in_process"],
        "single_runner": single_seqs / med["single_runner"],
        "both_runners": both_seqs / med["both_runners"],
    }
    result = {
        "sequences_per_s": {k: round(v, 3) for k, v in thr.items()},
        "seconds": {k: _summary(v) for k, v in runs.items()},
        "sequences_per_call": {"in_process": n, "single_runner": single_seqs, "both_runners": both_seqs},
        "runner_torch_threads": threads,
        "build_algo_s": round(build_s, 2),
        "settings": {
            "task": "dna (L = 200) with a random DNAConvDenoiser generator",
            "hidden": hidden,
            "stacks": stacks,
            **sepo_kw,
            "num_env_runners": 2,
            "num_cpus_per_env_runner": 1,
            "oracle_actors": 1,
            "reward": reward_spec,
            "sequences_per_runner_call": n,
            "repeats": repeats,
        },
        "load_avg_1m_at_start": load,
        "quick": quick,
    }
    _RAY_RESULTS[quick] = result
    return result


@register("ray_overhead")
def ray_overhead(args: argparse.Namespace) -> dict:
    """Rollout throughput through one EnvRunner + the oracle actor / the same module and reward in-process."""
    r = ray_rollout_measurements(args)
    med = {k: v["median"] for k, v in r["seconds"].items()}
    return {
        "ratio": round(r["sequences_per_s"]["single_runner"] / r["sequences_per_s"]["in_process"], 4),
        "overhead_s_per_call": round(med["single_runner"] - med["in_process"], 4),
        "rllib_and_transfer_s_per_call": round(med["single_runner"] - med["generate_inside_runner"], 4),
        "reward_actor_roundtrip_s": r["seconds"]["reward_actor"]["median"],
        "reward_in_process_s": r["seconds"]["reward_in_process"]["median"],
        **r,
        "note": (
            "ratio = sequences/s of one EnvRunner.sample() call (RLModule.generate on the runner, one batched "
            "reward-actor call in the vectorised env step, episodes returned to the driver) / sequences/s of the "
            "same generate(n) + reward in the driver; 1.0 = Ray adds nothing. overhead_s_per_call is the absolute "
            "cost per rollout call; rllib_and_transfer_s_per_call = single-runner call - generate(n) timed inside "
            "the runner, i.e. RLlib's env-runner loop and connectors, the actor round trip and shipping the "
            "episodes with their old-policy columns to the driver; the rest of the overhead is the runner "
            "process computing slower than the driver (CPU contention). It is a fixed cost, so the ratio goes to 1 as the "
            "per-call work grows (more sequences per runner, longer T, bigger generator) and drops for toy-sized "
            "calls. Moved by: sequences per runner call (amortises the fixed cost), the size of the extra columns "
            "(snis_sites N K (m-1) M, kl_states N S L), the reward's own cost and placement (an oracle on a GPU "
            "actor is faster than in-process on a CPU), and load from other processes on the 2 shared cores."
        ),
    }


@register("rollout_scaling")
def rollout_scaling(args: argparse.Namespace) -> dict:
    """Throughput with 2 rollout workers / (2 x one worker), same runners, same per-runner batch (weak scaling)."""
    r = ray_rollout_measurements(args)
    thr = r["sequences_per_s"]
    return {
        "ratio": round(thr["both_runners"] / (2 * thr["single_runner"]), 4),
        "ideal": 1.0,
        "cores": os.cpu_count(),
        "sequences_per_s": {k: thr[k] for k in ("single_runner", "both_runners")},
        "seconds": {k: r["seconds"][k] for k in ("single_runner", "both_runners")},
        "sequences_per_call": {k: r["sequences_per_call"][k] for k in ("single_runner", "both_runners")},
        "measured_with": "the Ray session of ray_overhead (one algorithm, interleaved rounds)",
        **{k: r[k] for k in ("runner_torch_threads", "settings", "load_avg_1m_at_start", "quick")},
        "note": (
            "ratio = sequences/s with both EnvRunners sampling at once / (2 x sequences/s of one runner alone), "
            "the same two runner processes and per-runner batch, interleaved (weak scaling: each runner samples "
            "B G / 2 per call). Each runner has num_cpus = 1 and one torch thread, so on this 2-core machine the "
            "ideal is 1.0; the driver waits idle, the reward actor (num_cpus 0) takes a little CPU per call. "
            "Below 1.0: the two runners contend for the 2 cores with the driver, the reward actor, Raylet and "
            "other processes on the machine (shared here, see load_avg_1m_at_start), and memory bandwidth. On a "
            "cluster with one GPU or enough cores per runner the ratio stays near 1 until the learner or the "
            "reward actors become the bottleneck (add oracle actors) or the weight broadcast dominates."
        ),
    }


# ----------------------------------------------------------------------------------------------------------
# gpu_throughput
# ----------------------------------------------------------------------------------------------------------

GPU_MODES = ("fp32", "tf32", "bf16")


def gpu_throughput_run(
    device: str = "cuda",
    hidden: int = 128,
    stacks: int = 4,
    length: int = 200,
    steps: int = 128,
    batches: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048),
    modes: tuple[str, ...] = GPU_MODES,
    repeats: int = 2,
    budget_s: float = 150.0,
) -> dict:
    """Sequences/s of the T-step sampler for a DNAConvDenoiser, per precision mode and batch size.

    fp32: TF32 off for cuDNN and matmul (true fp32); tf32: PyTorch's default for convolutions (cuDNN TF32 on);
    bf16: ``torch.autocast(dtype=bfloat16)`` (LayerNorm and the sampler's log-softmax stay fp32). Each batch:
    one 2-step warm-up (cuDNN autotuning), then `repeats` full samples, median. The sweep of a mode stops at
    an out-of-memory error, when a larger batch is >10% slower than the best so far, or after `budget_s`.
    """
    import contextlib

    from .diffusion import sample

    dev = torch.device(device)
    flags = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    model = _dna_conv(hidden, stacks).to(dev).eval()
    out = {}
    try:
        torch.backends.cudnn.benchmark = True
        for mode in modes:
            if mode not in GPU_MODES:
                raise ValueError(f"mode must be one of {GPU_MODES}, got {mode!r}")
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"

            def ctx(mode=mode):
                if mode == "bf16":
                    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
                return contextlib.nullcontext()

            rows, best, start = {}, None, time.perf_counter()
            for b in batches:
                try:
                    with ctx(), torch.no_grad():
                        sample(model, b, length, min(2, steps), device=dev)
                        if dev.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(dev)
                        times = [
                            _seconds(lambda b=b: sample(model, b, length, steps, device=dev), dev)
                            for _ in range(repeats)
                        ]
                except torch.cuda.OutOfMemoryError:
                    rows[str(b)] = {"error": "out of memory"}
                    torch.cuda.empty_cache()
                    break
                t = statistics.median(times)
                row = {"sequences_per_s": round(b / t, 2), "seconds": _summary(times, 4)}
                if dev.type == "cuda":
                    row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
                rows[str(b)] = row
                if best is None or row["sequences_per_s"] > rows[str(best)]["sequences_per_s"]:
                    best = b
                elif row["sequences_per_s"] < 0.9 * rows[str(best)]["sequences_per_s"]:
                    break
                if time.perf_counter() - start > budget_s:
                    break
            out[mode] = {
                "best_batch": best,
                "best_sequences_per_s": rows[str(best)]["sequences_per_s"] if best is not None else None,
                "by_batch": rows,
            }
    finally:
        (
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = flags
    return {
        "modes": out,
        "settings": {
            "hidden": hidden,
            "stacks": stacks,
            "length": length,
            "steps": steps,
            "repeats": repeats,
        },
    }


@register("gpu_throughput")
def gpu_throughput(args: argparse.Namespace) -> dict:
    """Sequences/s of the DRAKES-size generator (hidden 128, 4 stacks, L = 200, T = 128), bf16 vs fp32."""
    if not torch.cuda.is_available():
        return {"skipped": "no GPU"}
    quick = is_quick(args)
    if quick:
        res = gpu_throughput_run("cuda", hidden=32, stacks=1, length=64, steps=4, batches=(8, 16), repeats=1)
    else:
        res = gpu_throughput_run("cuda")
    best = {mode: row["best_sequences_per_s"] for mode, row in res["modes"].items()}
    return {
        "best_sequences_per_s": best,
        "bf16_over_fp32": round(best["bf16"] / best["fp32"], 3)
        if best.get("bf16") and best.get("fp32")
        else None,
        **res,
        "quick": quick,
        "note": (
            "Sequences/s of the whole T-step sampler (T forwards + bookkeeping, one sequence = T = 128 forwards of "
            "a 200-bp, 20-layer dilated CNN), at the best batch of the sweep. fp32 = TF32 off (true fp32), tf32 = "
            "PyTorch's default for convolutions, bf16 = autocast. Moved by: batch (small batches are launch-bound: "
            "per step ~10 bookkeeping kernels plus ~70 for the network; CUDA graphs or torch.compile would remove "
            "that), precision (bf16 tensor cores), channels-last / fused LayerNorm+conv, and the float64 draws of "
            "the sampler (cheap next to the convolutions)."
        ),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m sepo_ray.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (default: all)")
    parser.add_argument("--output", default=None, help="write the JSON here as well")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (fidelity: default 20)")
    parser.add_argument(
        "--quick", action="store_true", help=f"tiny sizes: a smoke run of every entry (or {QUICK_ENV}=1)"
    )
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"--only: unknown benchmark(s) {unknown}; valid: {sorted(BENCHMARKS)}")
    torch.set_num_threads(1)
    results = {}
    for name in names:
        start = time.perf_counter()
        result = BENCHMARKS[name](args)
        results[name] = {**result, "machine": machine_info(), "wall_s": round(time.perf_counter() - start, 2)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
