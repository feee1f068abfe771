"""SEPO at every noise level (objective sepo_t) and the per-token alpha scale, on exactly enumerable toys."""

from __future__ import annotations

import math

import pytest
import torch

from sepo_ray.diffusion import LogLinearSchedule, elbo_states, elbo_token_log_probs, unmask_probability
from sepo_ray.sepo import noised_sepo_loss, update
from sepo_ray.sepo.toy import ExactToy, ToyDenoiser


def _toy(m=3, length=4, seed=0):
    torch.manual_seed(seed)
    return ToyDenoiser(m, length, hidden=16)


def _exact_elbo(model, x, steps):
    """E over every (k, mask) of the variational path of sum_k p_k sum_masked log p(x_l | z), by enumeration."""
    from sepo_ray.benchmarks.fidelity import _all_elbo_states

    states, weights = _all_elbo_states(x, steps, model.num_tokens)
    lp = elbo_token_log_probs(model, x, states)  # (N, T 2^L, L)
    return (weights * lp.sum(-1)).sum(1)  # (N,)


def test_elbo_states_mask_law_weights_and_prompt():
    x = torch.randint(0, 3, (4000, 6))
    free = torch.ones_like(x, dtype=torch.bool)
    free[:, :2] = False
    steps, s = 5, 3
    states, w = elbo_states(x, steps, s, 3, generator=torch.Generator().manual_seed(0), free=free)
    assert states.shape == (4000, s, 6) and w.shape == (4000, s)
    assert not bool((states[:, :, :2] == 3).any())  # prompt positions stay clean
    assert torch.equal(
        torch.where(states == 3, x[:, None].expand_as(states), states), x[:, None].expand_as(states)
    )
    sched = LogLinearSchedule()
    a1 = float(sched.alpha(1.0))
    # the weight names the step: w = (T / S) p_k; the mask frequency at that step is (1 - alpha(t_k)) / (1 - alpha(1))
    for k in range(1, steps + 1):
        pk = unmask_probability(sched, k / steps, (k - 1) / steps) * steps / s
        at_k = (w - pk).abs() < 1e-12
        if k < steps:  # p_T = p_{T-1} can coincide only by accident; every other step has its own weight
            assert bool(at_k.any())
        move = (1 - float(sched.alpha(k / steps))) / (1 - a1)
        freq = (states[:, :, 2:][at_k] == 3).double().mean()
        n = int(at_k.sum()) * 4
        assert abs(float(freq) - move) < 5 * math.sqrt(move * (1 - move) / n) + 1e-9, (k, float(freq), move)


def test_one_step_elbo_is_the_exact_log_likelihood_and_bounds_it_otherwise():
    model = _toy().double()
    toy1, toy4 = ExactToy(model, 1), ExactToy(model, 4)
    x = toy1.clean  # (C, L): every sequence
    with torch.no_grad():
        assert torch.allclose(_exact_elbo(model, x, 1), toy1.log_pi(), atol=1e-12)
        bound, log_pi = _exact_elbo(model, x, 4), toy4.log_pi()
    assert bool((bound <= log_pi + 1e-12).all()) and float((log_pi - bound).max()) > 1e-4


def test_elbo_states_estimator_is_unbiased():
    model = _toy().double()
    x = ExactToy(model, 3).clean[[0, 7, 20, 40]]  # (4, L)
    with torch.no_grad():
        exact = _exact_elbo(model, x, 3)
        reps = x.repeat(3000, 1)
        states, w = elbo_states(reps, 3, 2, model.num_tokens, generator=torch.Generator().manual_seed(1))
        est = (w * elbo_token_log_probs(model, reps, states).sum(-1)).sum(1).reshape(3000, 4)
    mean, se = est.mean(0), est.std(0) / math.sqrt(3000)
    assert bool(((mean - exact).abs() < 5 * se).all()), (mean, exact, se)


def test_noised_loss_is_advantage_weighted_elbo_gradient_on_policy_and_clips():
    model = _toy().double()
    x = ExactToy(model, 3).clean[[1, 5, 9]]
    states, w = elbo_states(x, 3, 4, model.num_tokens, generator=torch.Generator().manual_seed(2))
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    lp = elbo_token_log_probs(model, x, states)
    loss, stats = noised_sepo_loss(lp, lp.detach(), states == 3, w, adv, 0.2, row_weight=0.25)
    g = torch.autograd.grad(loss, list(model.parameters()))
    target = -(0.25 * adv * (w * elbo_token_log_probs(model, x, states).sum(-1)).sum(1)).mean()
    g_ref = torch.autograd.grad(target, list(model.parameters()))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g, g_ref))
    assert stats["clip_frac"] == 0.0
    # far off-policy with A > 0 and r > 1 + eps everywhere: the clipped branch, no gradient
    lp = elbo_token_log_probs(model, x, states)
    loss, stats = noised_sepo_loss(lp, lp.detach() - 1.0, states == 3, w, adv.abs(), 0.2)
    g = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert all(t is None or float(t.abs().max()) == 0.0 for t in g)
    assert stats["clip_frac"] == 1.0
    with pytest.raises(ValueError, match="step_weight"):
        noised_sepo_loss(lp, lp.detach(), states == 3, w[:, :1], adv, 0.2)


def test_every_noise_level_sepo_is_the_exact_gradient_at_one_step():
    """With T = 1 the ELBO is log pi exactly, so the sepo_t estimator averaged over its states and x ~ pi is
    grad E_pi[R] itself (cosine 1), the fidelity table's sepo_t/every_state row."""
    from sepo_ray.benchmarks.fidelity import FIDELITY_DEFAULTS, cosine, estimator_gradient, flat_grad
    from sepo_ray.diffusion import Sample
    from sepo_ray.sepo.toy import toy_reward

    model = _toy().double()
    toy = ExactToy(model, 1)
    rewards = toy_reward(3, 4, seed=0)
    pi = toy.pi().detach()
    adv = len(pi) * pi * (rewards - (pi * rewards).sum())
    batch = Sample(x=toy.clean, log_prob=torch.zeros(len(pi), dtype=torch.float64))
    cfg = {**FIDELITY_DEFAULTS, "steps": 1}
    est = estimator_gradient("sepo_t/every_state", model, model, toy, toy, batch, adv, cfg, None)
    exact = flat_grad((toy.pi() * rewards).sum(), list(model.parameters()))
    assert cosine(est, exact) > 1 - 1e-10
    assert torch.allclose(est, exact, atol=1e-10)


def _spec(objective, alpha):
    from sepo_ray.settings import SEPO_SETTINGS

    settings = {k: s.default for k, s in SEPO_SETTINGS.items()}
    settings.update(objective=objective, kl_alpha=alpha, denoise_steps=3, noise_states=2, kl_steps=2)
    return update.UpdateSpec.from_settings(settings, 3)


@pytest.mark.parametrize("objective", ["sepo", "sepo_t", "trajectory"])
def test_alpha_weighs_the_per_sequence_kl_per_free_token(objective):
    """loss = mean_x (J_x + alpha KL_x) / C_x for every objective: the KL part is alpha * mean(KL_x / C_x)."""
    torch.manual_seed(0)
    model, ref = _toy(length=5).double(), _toy(length=5, seed=1).double()
    gen = torch.Generator().manual_seed(0)
    prompt = torch.full((6, 2), 3)
    prompt[:3] = torch.tensor([0, 1])  # half the rows have a 2-token prompt: C_x = 3, the others C_x = 5
    batch = update.rollout(model, 6, 5, _spec(objective, 0.7), generator=gen, prompt=prompt)
    batch["advantages"] = torch.linspace(-1, 1, 6, dtype=torch.float64)
    c = update.free_tokens(batch)
    assert c.tolist() == [3, 3, 3, 5, 5, 5]
    from sepo_ray.sepo.kl import kl_to_reference

    kl_x = kl_to_reference(model, ref, batch["kl_states"], batch["kl_steps"], 3)
    total0, _ = update.update_loss(
        model, ref, batch, _spec(objective, 0.0), generator=torch.Generator().manual_seed(5)
    )
    total, stats = update.update_loss(
        model, ref, batch, _spec(objective, 0.7), generator=torch.Generator().manual_seed(5)
    )
    assert float(kl_x.detach().min()) > 0
    assert float(total - total0) == pytest.approx(0.7 * float((kl_x / c).mean()), rel=1e-9)
    assert float(stats["kl"]) == pytest.approx(float(kl_x.mean()), rel=1e-9)
