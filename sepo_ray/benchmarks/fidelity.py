"""``fidelity`` (DESIGN "Exact check"): gradient fidelity of the SEPO estimators on an exactly enumerable toy.

On the toy (m = 3 tokens, L = 4, T = 4 steps, a small MLP denoiser pretrained with the MDLM loss on a random
target law) it reports

- ``exact_identity_max_rel_err``: max relative error between grad of the SEPO loss fed with exact pi and exact
  log-ratios over all y != x (x enumerated) and autograd's -grad E_pi[R], on- and off-policy (Thm 3.1, 3.2);
- ``fidelity`` / ``fidelity_offpolicy``: mean and standard error over seeds of the cosine similarity between
  an estimator's gradient of E[R] (one batch of N sampled x) and the exact gradient. Rows
  "<score>/<pi_hat>/<neighbours>": score in {clean, conditional, exact_ratio}, pi_hat in {none (single
  parent q(y|x)), snisM, exact_pi, uniform}, neighbours in {all (Hamming-1), k2 (K = 2 positions, weight
  L/K), every (all y != x, exact rows only)}; "reinforce_traj" = sum over the sampler's recorded steps of
  grad log p_theta(transition) (DDPO / d1); "sepo_t/sS" = SEPO at every noise level (objective sepo_t) with S
  noised states per x, "sepo_t/every_state" = the same averaged exactly over all its states (A grad ELBO_T(x)). Advantages: leave-one-out baseline over the batch,
  A_i = R_i - mean_{j != i} R_j (unbiased; GRPO's std scaling only rescales). Off-policy: one Adam step
  (lr 0.005, mean |log pi_theta(x)/pi_old(x)| about 0.1) on the exact objective moves theta_old to theta; x
  and paths come from theta_old, the ratio is clipped at eps = 0.2 (App. B.1 coefficient) and the target is the
  exact grad at theta. SNIS draws for theta and theta_old share their random numbers (same sites);
- ``fidelity_expected``: the same rows with x enumerated and weighted by pi(x) (no batch noise): the cosine of
  the estimator's expectation, i.e. its bias alone;
- ``fidelity_untrained_model``: on-policy rows for a randomly initialised denoiser (fewer seeds).

:func:`fidelity_comparison` pairs two rows of this table (our default estimator vs. the published one) for the
``learner_forwards_per_update`` entry.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from sepo_ray.settings import SEPO_SETTINGS

from .common import mean_sem, register

FIDELITY_DEFAULTS = {
    "num_tokens": 3,
    "length": 4,
    "steps": 4,
    "batch": 32,
    "hidden": 32,
    "pretrain_iters": 150,
    "pretrain_batch": 128,
    "clip_eps": SEPO_SETTINGS["clip_eps"].default,
    "offpolicy_lr": 0.005,
}


def flat_grad(loss: torch.Tensor, params) -> torch.Tensor:
    """d loss / d params flattened into one vector (zeros for parameters the loss does not use)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors (0 when either is zero)."""
    denom = a.norm() * b.norm()
    return float((a @ b) / denom) if denom > 0 else 0.0


def make_fidelity_toy(seed: int, cfg: dict, pretrained: bool = True):
    """(model, rewards) for one seed: ToyDenoiser (float64) pretrained on a random target law, reward table."""
    from sepo_ray.sepo.toy import ToyDenoiser, pretrain_toy, toy_reward

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
    from sepo_ray.sepo import ppo_coefficients, ratio, sepo_loss
    from sepo_ray.sepo.toy import ExactToy

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
    expected = -flat_grad((toy.pi() * rewards).sum(), params)
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
    got = flat_grad(loss, params)
    return float((got - expected).norm() / expected.norm())


def _hamming_exact(toy, log_pi, x, positions):
    """Exact log pi(y) - log pi(x) and pi(y) for the (k, v) neighbours: (N, K, m) each; log-ratio has grad."""
    from sepo_ray.sepo import neighbours
    from sepo_ray.sepo.toy import encode

    y = neighbours(x, positions, toy.m)  # (N, K, m, L)
    log_ratio = log_pi[encode(y, toy.m)] - log_pi[encode(x, toy.m)].view(-1, 1, 1)  # (N, K, m)
    return log_ratio, log_pi[encode(y, toy.m)].detach().exp()


def estimator_rows(cfg: dict):
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
        "sepo_t/s1",
        "sepo_t/s4",
        "sepo_t/every_state",
        "reinforce_traj",
    ]
    return rows


def _all_elbo_states(x, steps: int, mask_id: int):
    """Every (step k, mask) state of the T-step ELBO's variational path for each x, with its exact weight
    P(mask | k) * p_k (the estimator of ``diffusion.elbo_states`` averaged exactly). -> (N, T 2^L, L), (N, T 2^L)."""
    from sepo_ray.diffusion import LogLinearSchedule, unmask_probability

    schedule = LogLinearSchedule()
    n, length = x.shape
    masks = ((torch.arange(2**length)[:, None] >> torch.arange(length)[None, :]) & 1).bool()  # (2^L, L)
    a_one = float(schedule.alpha(1.0))
    states, weights = [], []
    for k in range(1, steps + 1):
        q = (1.0 - float(schedule.alpha(k / steps))) / (1.0 - a_one)
        prob = (q ** masks.sum(1)) * ((1.0 - q) ** (~masks).sum(1))  # (2^L,)
        p_k = unmask_probability(schedule, k / steps, (k - 1) / steps)
        states.append(
            torch.where(masks[None], torch.full_like(x[:, None], mask_id), x[:, None])
        )  # (N, 2^L, L)
        weights.append((p_k * prob.double())[None].expand(n, -1))
    return torch.cat(states, 1), torch.cat(weights, 1)


def estimator_gradient(
    name: str, model, old, toy, toy_old, batch, advantages, cfg: dict, gen
) -> torch.Tensor:
    """Gradient estimate of E_{pi_theta}[R] (ascent direction, = -grad loss) from one batch sampled by `old`.

    batch: Sample from `old` with its path; advantages (N,). On-policy when model and old hold the same
    weights (ratio = 1 exactly).
    """
    from sepo_ray.diffusion import Path, score_path
    from sepo_ray.sepo import (
        log_scores,
        neighbour_mask,
        ppo_coefficients,
        ratio,
        sample_positions,
        sepo_loss,
        single_sample_log_pi,
        snis_log_pi,
    )
    from sepo_ray.sepo.toy import encode

    params = list(model.parameters())
    x = batch.x  # (N, L)
    n, length = x.shape
    m = model.num_tokens
    eps = cfg["clip_eps"]
    if name == "reinforce_traj":
        log_p = score_path(model, Path(batch.path.states, batch.path.ops))  # (N,)
        r = torch.exp(log_p.detach() - batch.log_prob)  # (N,)
        coef = torch.minimum(r.clamp(1 - eps, 1 + eps) * advantages, r * advantages)  # (N,)
        return -flat_grad(-(coef * log_p).mean(), params)
    if name.startswith("sepo_t/"):  # SEPO at every noise level: states of the ELBO's variational path
        from sepo_ray.diffusion import elbo_states, elbo_token_log_probs
        from sepo_ray.sepo import noised_sepo_loss

        kind = name.split("/")[1]
        if kind == "every_state":
            states, weights = _all_elbo_states(x, cfg["steps"], m)
        else:
            states, weights = elbo_states(x, cfg["steps"], int(kind.removeprefix("s")), m, generator=gen)
        lp = elbo_token_log_probs(model, x, states, m)
        with torch.no_grad():
            lp_old = elbo_token_log_probs(old, x, states, m)
        loss, _ = noised_sepo_loss(lp, lp_old, states == m, weights, advantages, eps)
        return -flat_grad(loss, params)
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
        return -flat_grad(loss, params)
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
    return -flat_grad(loss, params)


def fidelity_seed(seed: int, cfg: dict, rows: list[str], pretrained: bool = True) -> dict:
    """Cosines for one seed: {"onpolicy": {row: cos}, "offpolicy": {row: cos}, "identity": [rel errs], ...}."""
    from sepo_ray.diffusion import Sample, sample
    from sepo_ray.sepo import leave_one_out_advantages
    from sepo_ray.sepo.toy import ExactToy, encode

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
        exact = flat_grad((toy.pi() * rewards).sum(), params)
        cos = {}
        for name in rows:
            if regime == "expected":
                if name == "reinforce_traj":
                    continue  # unbiased by construction: its expectation is the exact gradient
                est = estimator_gradient(name, theta, old, toy, toy_old, everything, adv_all, cfg, gen)
            else:
                est = estimator_gradient(name, theta, old, toy, toy_old, batch, adv, cfg, gen)
            cos[name] = cosine(est, exact)
        out[regime] = cos
    return out


_FIDELITY_PER_SEED: dict[tuple, list[dict]] = {}  # per-seed cosines of the runs made in this process


def run_fidelity(seeds: int = 20, cfg: dict | None = None, pretrained: bool = True) -> dict:
    """The fidelity table over `seeds` seeds (see module docstring)."""
    cfg = {**FIDELITY_DEFAULTS, **(cfg or {})}
    rows = estimator_rows(cfg)
    per_seed = [fidelity_seed(seed, cfg, rows, pretrained) for seed in range(seeds)]
    _FIDELITY_PER_SEED[(seeds, pretrained, json.dumps(cfg, sort_keys=True))] = per_seed
    identity = [e for s in per_seed for e in s["identity"]]
    # the identity with correctors on a second toy shape
    from sepo_ray.sepo.toy import ToyDenoiser, toy_reward

    torch.manual_seed(0)
    extra = ToyDenoiser(2, 3)
    identity.append(exact_identity_rel_err(extra, toy_reward(2, 3), 3, offpolicy=True, corrector_steps=1))
    return {
        "exact_identity_max_rel_err": max(identity),
        "fidelity": {row: mean_sem([s["onpolicy"][row] for s in per_seed]) for row in rows},
        "fidelity_offpolicy": {row: mean_sem([s["offpolicy"][row] for s in per_seed]) for row in rows},
        "fidelity_expected": {
            row: mean_sem([s["expected"][row] for s in per_seed]) for row in rows if row != "reinforce_traj"
        },
        "offpolicy_mean_abs_log_ratio": mean_sem([s["offpolicy_mean_abs_log_ratio"] for s in per_seed]),
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
        if rows["ours"] not in estimator_rows(cfg):
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
        diff = mean_sem([a - b for a, b in zip(vals["ours"], vals["published"])])
        out[regime] = {
            **{key: mean_sem(v) for key, v in vals.items()},
            "ours_minus_published": diff,
            "verdict": _verdict(diff),
        }
    return out
