"""SEPO math: exact gradient identities on the enumerable toy, vectorised vs loop, clipping, advantages, KL."""

import copy
import itertools
import math

import pytest
import torch

from sepo_ray.diffusion import LogLinearSchedule, step, unmask_probability
from sepo_ray.sepo import (
    group_advantages,
    grpo_coefficients,
    kl_masked_path,
    kl_to_reference,
    leave_one_out_advantages,
    log_pi_hat,
    log_scores,
    neighbour_mask,
    neighbours,
    ppo_advantages,
    ppo_coefficients,
    ratio,
    sample_positions,
    sepo_loss,
    single_sample_log_pi,
    snis_log_pi,
    snis_log_pi_hat,
    snis_terms,
)
from sepo_ray.sepo.toy import ExactToy, ToyDenoiser, clean_states, encode, toy_reward

M, L = 3, 3


def flat_grad(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


class JointModel(torch.nn.Module):
    """A 'perfect' denoiser for a joint law over clean states: p(x_l = v | unmasked tokens of z) exactly."""

    def __init__(self, probs, m, length):
        super().__init__()
        self.num_tokens, self.mask_id, self.length = m, m, length
        self.probs = probs  # (m^L,)
        self.clean = clean_states(m, length)  # (C, L)

    def forward(self, z):
        consistent = ((self.clean[None] == z[:, None]) | (z[:, None] == self.mask_id)).all(-1)  # (B, C)
        weights = consistent * self.probs  # (B, C)
        onehot = torch.nn.functional.one_hot(self.clean, self.num_tokens).to(self.probs.dtype)  # (C, L, m)
        marg = torch.einsum("bc,clm->blm", weights, onehot)  # (B, L, m)
        return torch.log(marg.clamp_min(1e-300))


def exact_all_pairs(toy, log_pi):
    """log_score[x, 0, y] = log pi(y) - log pi(x) over all clean x, y: (C, 1, C), and mask y != x."""
    c = log_pi.shape[0]
    log_score = (log_pi[None, :] - log_pi[:, None]).unsqueeze(1)  # (C, 1, C)
    mask = ~torch.eye(c, dtype=torch.bool).unsqueeze(1)  # (C, 1, C)
    return log_score, mask


@pytest.mark.parametrize("m,length,steps,corr", [(3, 3, 3, 0), (2, 4, 4, 1), (4, 3, 2, 0)])
def test_exact_identity_on_policy(m, length, steps, corr):
    """Thm 3.1: with exact pi, exact ratios over all y != x, on-policy, raw rewards, x enumerated and weighted
    by pi(x), grad sepo_loss = -grad E_pi[R]."""
    torch.manual_seed(m + length)
    model = ToyDenoiser(m, length)
    toy = ExactToy(model, steps, corrector_steps=corr)
    rewards = toy_reward(m, length, seed=1)
    params = list(model.parameters())
    expected = -flat_grad((toy.pi() * rewards).sum(), params)
    log_pi = toy.log_pi()
    pi = log_pi.exp().detach()
    log_score, mask = exact_all_pairs(toy, log_pi)
    c = pi.shape[0]
    pi_hat = pi.view(1, 1, c).expand(c, 1, c)
    r = ratio(
        log_score,
        log_score.detach(),
        log_pi.view(1, 1, c).expand(c, 1, c),
        log_pi.view(1, 1, c).expand(c, 1, c),
    )
    assert torch.allclose(r, torch.ones_like(r))
    coef = ppo_coefficients(r, rewards, pi_hat, clip_eps=0.2) * (pi * c).view(c, 1, 1)  # x weighted by pi(x)
    loss, stats = sepo_loss(log_score, coef, mask, ratio=r, clip_eps=0.2)
    got = flat_grad(loss, params)
    assert rel_err(got, expected) <= 1e-5
    assert stats["clip_frac"] == 0.0
    # the sign matters: the opposite convention fails
    assert rel_err(-got, expected) > 1.0


def test_exact_identity_off_policy():
    """Thm 3.2: x ~ pi_old (enumerated, weighted by pi_old), unclipped r = pi(y)/pi_old(y) s_old/s."""
    torch.manual_seed(3)
    model = ToyDenoiser(M, L)
    old = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    toy, toy_old = ExactToy(model, 3), ExactToy(old, 3)
    rewards = toy_reward(M, L, seed=2)
    params = list(model.parameters())
    expected = -flat_grad((toy.pi() * rewards).sum(), params)
    log_pi = toy.log_pi()
    log_pi_old = toy_old.log_pi().detach()
    log_score, mask = exact_all_pairs(toy, log_pi)
    log_score_old, _ = exact_all_pairs(toy_old, log_pi_old)
    c = log_pi.shape[0]
    r = ratio(
        log_score,
        log_score_old,
        log_pi.detach().view(1, 1, c).expand(c, 1, c),
        log_pi_old.view(1, 1, c).expand(c, 1, c),
    )
    # exact ratio = pi(x) / pi_old(x) for every y
    expect_r = (log_pi - log_pi_old).exp().detach().view(c, 1, 1).expand(c, 1, c)
    assert torch.allclose(r[mask], expect_r[mask], rtol=1e-10)
    assert (r[mask] - 1).abs().max() > 0.2  # genuinely off-policy
    pi_hat = log_pi.exp().detach().view(1, 1, c).expand(c, 1, c)
    coef = ppo_coefficients(r, rewards, pi_hat, clip_eps=1e9) * (log_pi_old.exp() * c).view(c, 1, 1)
    loss, _ = sepo_loss(log_score, coef, mask)
    assert rel_err(flat_grad(loss, params), expected) <= 1e-5
    # with clipping at 0.2 the gradient is no longer exact
    coef_clip = ppo_coefficients(r, rewards, pi_hat, clip_eps=0.2) * (log_pi_old.exp() * c).view(c, 1, 1)
    log_score, _ = exact_all_pairs(toy, toy.log_pi())
    loss_clip, _ = sepo_loss(log_score, coef_clip, mask)
    assert rel_err(flat_grad(loss_clip, params), expected) > 1e-3


def test_positions_and_neighbours_match_loops():
    gen = torch.Generator().manual_seed(0)
    pos, w = sample_positions(5, 7, 3, gen)
    assert pos.shape == (5, 3) and w == pytest.approx(7 / 3)
    assert all(len(set(row.tolist())) == 3 for row in pos)
    allpos, w1 = sample_positions(2, 7, None)
    assert w1 == 1.0 and torch.equal(allpos[1], torch.arange(7))
    # uniformity: every position equally often
    many, _ = sample_positions(30000, 4, 1, torch.Generator().manual_seed(1))
    freq = torch.bincount(many.reshape(-1), minlength=4) / 30000
    assert (freq - 0.25).abs().max() < 0.015
    x = torch.randint(0, 4, (5, 7), generator=gen)
    y = neighbours(x, pos, 4)
    mask = neighbour_mask(x, pos, 4)
    for b, k, v in itertools.product(range(5), range(3), range(4)):
        expect = x[b].clone()
        expect[pos[b, k]] = v
        assert torch.equal(y[b, k, v], expect)
        assert mask[b, k, v].item() == (v != x[b, pos[b, k]].item())


@pytest.mark.parametrize("estimator", ["clean", "conditional"])
def test_log_scores_match_loop(estimator):
    torch.manual_seed(0)
    model = ToyDenoiser(4, 5)
    x = torch.randint(0, 4, (3, 5))
    pos, _ = sample_positions(3, 5, 2, torch.Generator().manual_seed(0))
    got = log_scores(model, x, pos, estimator)
    assert got.shape == (3, 2, 4)
    for b, k in itertools.product(range(3), range(2)):
        lpos, cur = pos[b, k].item(), x[b, pos[b, k]].item()
        if estimator == "clean":
            logp = torch.log_softmax(model(x[b : b + 1]), -1)[0, lpos]
            expect = logp.clone()
            expect[cur] = 0.0
        else:
            z = x[b : b + 1].clone()
            z[0, lpos] = 4
            logp = torch.log_softmax(model(z), -1)[0, lpos]
            expect = logp - logp[cur]
        assert torch.allclose(got[b, k], expect, atol=1e-12)
    assert got.requires_grad


def test_conditional_score_is_exact_for_a_perfect_model():
    probs = torch.softmax(
        torch.randn(M**L, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 0
    )
    model = JointModel(probs, M, L)
    x = clean_states(M, L)
    pos, _ = sample_positions(len(x), L, None)
    y = neighbours(x, pos, M)  # (C, L, m, L)
    exact = probs.log()[encode(y, M)] - probs.log()[encode(x, M)].view(-1, 1, 1)
    assert torch.allclose(log_scores(model, x, pos, "conditional"), exact, atol=1e-10)
    assert not torch.allclose(log_scores(model, x, pos, "clean"), exact, atol=1e-2)


def test_snis_formula_matches_loop():
    gen = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(4, 6, dtype=torch.float64, generator=gen) for _ in range(3))
    got = snis_log_pi_hat(a, b, c)
    for i in range(4):
        w = [math.exp(b[i, j] - c[i, j]) for j in range(6)]
        num = sum(w[j] * math.exp(a[i, j]) for j in range(6))
        assert got[i].item() == pytest.approx(math.log(num / sum(w)), rel=1e-12)


@pytest.mark.parametrize("estimator", ["clean", "conditional"])
def test_snis_terms_match_loop(estimator):
    torch.manual_seed(0)
    model = ToyDenoiser(3, 4)
    x = torch.randint(0, 3, (2, 4))
    pos, _ = sample_positions(2, 4, 2, torch.Generator().manual_seed(0))
    t = snis_terms(model, x, pos, 5, estimator, torch.Generator().manual_seed(1))
    for b, k, j, i in itertools.product(range(2), range(2), range(2), range(5)):
        y = x[b].clone()
        y[pos[b, k]] = t.others[b, k, j]
        site, tok = t.sites[b, k, j, i].item(), t.tokens[b, k, j, i].item()
        ym = y.clone()
        ym[site] = 3
        logp = torch.log_softmax(model(ym[None]), -1)[0, site]
        assert t.log_q_z_given_y[b, k, j, i].item() == pytest.approx(logp[tok].item(), abs=1e-12)
        assert t.log_q_y_given_z[b, k, j, i].item() == pytest.approx(logp[y[site]].item(), abs=1e-12)
        if estimator == "conditional":
            expect_ratio = logp[tok].item() - logp[y[site]].item()
        else:
            z = y.clone()
            z[site] = tok
            expect_ratio = (
                0.0 if tok == y[site] else -torch.log_softmax(model(z[None]), -1)[0, site, y[site]].item()
            )
        assert t.log_ratio_z_over_y[b, k, j, i].item() == pytest.approx(expect_ratio, abs=1e-12)
    pi_hat = snis_log_pi(model, x, pos, 5, estimator, torch.Generator().manual_seed(1))
    assert pi_hat.shape == (2, 2, 3)
    expect = snis_log_pi_hat(t.log_q_y_given_z, t.log_ratio_z_over_y, t.log_q_z_given_y)
    assert torch.allclose(pi_hat.gather(-1, t.others), expect)
    assert (pi_hat.masked_select(~neighbour_mask(x, pos, 3)) == 0).all()


def test_snis_conditional_algebra_and_limit():
    """Conditional score: w_i q(y | z_i) = 1 exactly, so pi_hat = 1 / mean_i 1/p(y_l' | y^(l')); as M grows
    it tends to the harmonic mean over sites; with a perfect model that is pi(y) / (pi(y) + pi(N(y)) / L)."""
    probs = torch.softmax(
        2 * torch.randn(M**L, dtype=torch.float64, generator=torch.Generator().manual_seed(4)), 0
    )
    model = JointModel(probs, M, L)
    x = clean_states(M, L)[[0, 7, 22]]
    pos, _ = sample_positions(3, L, None)
    t = snis_terms(model, x, pos, 6, "conditional", torch.Generator().manual_seed(0))
    wq = t.log_ratio_z_over_y - t.log_q_z_given_y + t.log_q_y_given_z
    assert wq.abs().max().item() < 1e-10
    got = snis_log_pi(model, x, pos, 20000, "conditional", torch.Generator().manual_seed(1))
    y = neighbours(x, pos, M)  # (3, L, m, L)
    pi_y = probs[encode(y, M)]  # (3, L, m)
    ball = torch.zeros_like(pi_y)
    for idx in itertools.product(range(3), range(L), range(M)):
        yy = y[idx]
        nb = neighbours(yy[None], torch.arange(L)[None], M)[0]  # (L, m, L)
        own = neighbour_mask(yy[None], torch.arange(L)[None], M)[0]
        ball[idx] = probs[encode(nb, M)][own].sum()
    limit = (pi_y / (pi_y + ball / L)).log()
    mask = neighbour_mask(x, pos, M)
    assert (got - limit)[mask].abs().max().item() < 0.03
    # SNIS does not estimate pi(y) itself
    assert (got - pi_y.log())[mask].abs().min().item() > 0.5


def test_single_sample_pi_and_dispatch():
    torch.manual_seed(0)
    model = ToyDenoiser(3, 4)
    x = torch.randint(0, 3, (2, 4))
    pos, _ = sample_positions(2, 4, None)
    none = log_pi_hat(model, x, pos, 0, "conditional")
    z = x[:1].clone()
    z[0, 1] = 3
    expect = torch.log_softmax(model(z), -1)[0, 1]
    v = (x[0, 1].item() + 1) % 3
    assert none[0, 1, v].item() == pytest.approx(expect[v].item(), abs=1e-12)
    assert torch.equal(none, single_sample_log_pi(model, x, pos, "conditional"))
    assert not none.requires_grad
    with pytest.raises(ValueError, match="num_samples"):
        log_pi_hat(model, x, pos, -1)
    with pytest.raises(ValueError, match="num_samples"):
        snis_log_pi(model, x, pos, 0)


def test_coefficients_match_loop_and_clip_by_hand():
    r = torch.tensor([[[0.5, 0.9, 1.0, 1.1, 1.5]], [[0.5, 0.9, 1.0, 1.1, 1.5]]], dtype=torch.float64)
    adv = torch.tensor([2.0, -3.0], dtype=torch.float64)
    pi_hat = torch.full_like(r, 0.5)
    got = ppo_coefficients(r, adv, pi_hat, clip_eps=0.2)
    # A > 0: r = 1.5 capped at 1.2, r = 0.5 kept (pessimistic); A < 0: r = 0.5 floored at 0.8, r = 1.5 kept
    expect = 0.5 * torch.tensor(
        [[[1.0, 1.8, 2.0, 2.2, 2.4]], [[-2.4, -2.7, -3.0, -3.3, -4.5]]], dtype=torch.float64
    )
    assert torch.allclose(got, expect)
    zero = ppo_coefficients(r, adv, pi_hat, clip_eps=0.2, zero_clipped=True)
    assert zero[0, 0, 4].item() == 0.0 and zero[1, 0, 0].item() == 0.0 and zero[0, 0, 0].item() == 0.5
    gen = torch.Generator().manual_seed(0)
    r2 = torch.rand(3, 2, 4, generator=gen, dtype=torch.float64) * 2
    a2 = torch.randn(3, generator=gen, dtype=torch.float64)
    p2 = torch.rand(3, 2, 4, generator=gen, dtype=torch.float64)
    got2 = ppo_coefficients(r2, a2, p2, 0.3)
    grpo = grpo_coefficients(r2, a2, p2, 0.3, group_size=3)
    for b, k, v in itertools.product(range(3), range(2), range(4)):
        rr, aa = r2[b, k, v].item(), a2[b].item()
        e = p2[b, k, v].item() * min(min(max(rr, 0.7), 1.3) * aa, rr * aa)
        assert got2[b, k, v].item() == pytest.approx(e, abs=1e-14)
        assert grpo[b, k, v].item() == pytest.approx(e / 3, abs=1e-14)


def test_sepo_loss_groups_and_stats():
    gen = torch.Generator().manual_seed(0)
    log_score = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    coef = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 2, 3, generator=gen) > 0.3
    loss, stats = sepo_loss(log_score, coef, mask, position_weight=2.0)
    per_x = [2.0 * sum(coef[b][mask[b]] * log_score[b][mask[b]]).item() for b in range(4)]
    assert loss.item() == pytest.approx(sum(per_x) / 4)
    loss_g, _ = sepo_loss(log_score, coef, mask, position_weight=2.0, group_size=2)
    assert loss_g.item() == pytest.approx((per_x[0] + per_x[1] + per_x[2] + per_x[3]) / 2)
    r = torch.tensor([0.5, 1.0, 1.1, 1.3, 2.0, 1.0], dtype=torch.float64).view(1, 2, 3).expand(4, 2, 3)
    _, stats = sepo_loss(log_score, coef, torch.ones_like(mask), ratio=r, clip_eps=0.2)
    assert stats["clip_frac"] == pytest.approx(3 / 6)
    assert stats["ratio_max"] == 2.0 and stats["ratio_mean"] == pytest.approx(6.9 / 6)
    loss.backward()
    assert torch.allclose(log_score.grad, 2.0 * coef * mask / 4)


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.allclose(group_advantages(r, 2), torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-6)
    s = math.sqrt(1.25)
    assert torch.allclose(group_advantages(r, 4), torch.tensor([-1.5, -0.5, 0.5, 1.5]) / s, atol=1e-6)
    assert torch.equal(group_advantages(torch.full((4,), 7.0), 2), torch.zeros(4))
    assert torch.allclose(leave_one_out_advantages(r), torch.tensor([-2.0, -2 / 3, 2 / 3, 2.0]))
    assert torch.allclose(ppo_advantages(r, torch.ones(4)), r - 1)


def test_value_errors_name_the_argument():
    t = torch.ones(2, 1, 3)
    adv = torch.ones(2)
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_coefficients(t, adv, t, clip_eps=0.0)
    with pytest.raises(ValueError, match="advantages"):
        ppo_coefficients(t, torch.ones(3), t, clip_eps=0.2)
    with pytest.raises(ValueError, match="pi_hat"):
        ppo_coefficients(t, adv, torch.ones(2, 1, 2), clip_eps=0.2)
    with pytest.raises(ValueError, match="group_size"):
        grpo_coefficients(t, adv, t, 0.2, group_size=3)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match="num_positions"):
        sample_positions(2, 4, 5)
    with pytest.raises(ValueError, match="coefficients"):
        sepo_loss(t, torch.ones(2, 1, 2), t.bool())
    with pytest.raises(ValueError, match="mask"):
        sepo_loss(t, t, torch.ones(2, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="log_score_old"):
        ratio(t, torch.ones(1), t, t)
    with pytest.raises(ValueError, match="log_q_z_given_y"):
        snis_log_pi_hat(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="estimator"):
        log_scores(
            ToyDenoiser(3, 3), torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long), "x"
        )
    with pytest.raises(ValueError, match="positions"):
        log_scores(ToyDenoiser(3, 3), torch.zeros(1, 3, dtype=torch.long), torch.full((1, 1), 3), "clean")


def brute_force_path_kl(toy_theta, toy_ref):
    """sum_k E_{z ~ mu_k} sum_z' P(z'|z) log P(z'|z) / P_ref(z'|z), from the full transition matrices."""
    logits, logits_ref = toy_theta.logits(), toy_ref.logits()
    mus = toy_theta.marginals()
    total = 0.0
    for i, k in enumerate(range(toy_theta.steps, 0, -1)):
        t, s = k / toy_theta.steps, (k - 1) / toy_theta.steps
        p, q = toy_theta.reverse_matrix(t, s, logits), toy_ref.reverse_matrix(t, s, logits_ref)
        terms = torch.where(
            p > 0, p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log()), torch.zeros_like(p)
        )
        total = total + (mus[i] * terms.sum(1)).sum()
    return total


def test_kl_masked_path_matches_brute_force():
    torch.manual_seed(0)
    model, ref = ToyDenoiser(M, L), ToyDenoiser(M, L)
    steps = 3
    toy, toy_ref = ExactToy(model, steps), ExactToy(ref, steps)
    states = toy.states  # (S, L)
    mus = toy.marginals()
    expect = brute_force_path_kl(toy, toy_ref)
    total = 0.0
    for i, k in enumerate(range(steps, 0, -1)):
        kl = kl_to_reference(model, ref, states[:, None], torch.tensor([k]), steps)  # (S,) = T * one-step KL
        total = total + (mus[i].detach() * kl).sum() / steps
    assert total.item() == pytest.approx(expect.item(), rel=1e-9)
    assert expect.item() > 1e-3
    # zero against itself, gradient flows to theta only
    same = kl_to_reference(model, model, states[:, None], torch.tensor([2]), steps)
    assert same.abs().max().item() < 1e-12
    kl = kl_to_reference(model, ref, states[:50, None].expand(50, 2, L), torch.tensor([3, 1]), steps)
    kl.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(p.grad is None for p in ref.parameters())


def test_kl_masked_path_by_hand_and_errors():
    logits = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]]]], dtype=torch.float64)  # (1, 1, 2, 2)
    ref = torch.zeros_like(logits)
    states = torch.tensor([[[2, 0]]])  # position 0 masked, position 1 clean
    sched = LogLinearSchedule()
    p = torch.softmax(logits[0, 0, 0], -1)
    kl0 = (p * (p.log() - math.log(0.5))).sum().item()
    got = kl_masked_path(logits, ref, states, torch.tensor([2]), 4, sched)
    assert got.item() == pytest.approx(4 * unmask_probability(sched, 0.5, 0.25) * kl0, rel=1e-12)
    with pytest.raises(ValueError, match="steps_k"):
        kl_masked_path(logits, ref, states, torch.tensor([5]), 4, sched)
    with pytest.raises(ValueError, match="logits_ref"):
        kl_masked_path(logits, ref[..., :1], states, torch.tensor([1]), 4, sched)


def test_toy_pi_uses_the_sampler_step():
    torch.manual_seed(0)
    model = ToyDenoiser(2, 3)
    toy = ExactToy(model, 2)
    pi = toy.pi()
    assert pi.sum().item() == pytest.approx(1.0, abs=1e-12)
    # brute force over every 2-step path with `step`
    sched = LogLinearSchedule()
    start = torch.full((1, 3), 2)
    mids = toy.states  # (S, L)
    lp1 = step(model, start.expand(len(mids), 3), 1.0, 0.5, sched, z_next=mids).log_prob  # (S,)
    src = mids.repeat_interleave(8, 0)  # (S * 8, L)
    dst = toy.clean.repeat(len(mids), 1)  # (S * 8, L)
    lp2 = step(model, src, 0.5, 0.0, sched, z_next=dst).log_prob.view(len(mids), 8)  # (S, 8)
    total = (lp1[:, None] + lp2).exp().sum(0).detach()  # (8,)
    assert torch.allclose(pi.detach(), total, atol=1e-12)
    lr = toy.log_ratio(pi.log(), toy.clean[:2], toy.clean[2:4])
    assert torch.allclose(lr, pi.log()[2:4] - pi.log()[:2])


def test_shared_snis_sites_give_common_random_numbers():
    from sepo_ray.sepo import draw_snis_sites, log_pi_hat, ratio

    torch.manual_seed(0)
    model = ToyDenoiser(num_tokens=3, length=4)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (5, 4), generator=g)
    positions, _ = sample_positions(5, 4, 2, generator=g)
    sites = draw_snis_sites(positions, 3, 4, 4, generator=g)
    assert sites.shape == (5, 2, 2, 4) and int(sites.min()) >= 0 and int(sites.max()) < 4
    old = log_pi_hat(
        model, x, positions, 4, "conditional", generator=torch.Generator().manual_seed(2), sites=sites
    )
    new = log_pi_hat(
        model, x, positions, 4, "conditional", generator=torch.Generator().manual_seed(3), sites=sites
    )
    assert torch.equal(old, new)  # same sites: the conditional SNIS estimate no longer depends on the noise
    fresh = log_pi_hat(model, x, positions, 4, "conditional", generator=torch.Generator().manual_seed(3))
    assert not torch.equal(old, fresh)
    scores = torch.zeros_like(old)
    assert torch.allclose(ratio(scores, scores, new, old), torch.ones_like(old))  # r = 1 at theta = theta_old
    with pytest.raises(ValueError, match="sites"):
        log_pi_hat(model, x, positions, 4, "conditional", sites=sites[..., :3])


def test_trajectory_pg_loss_is_reinforce_on_policy_and_clips():
    from sepo_ray.sepo import trajectory_pg_loss

    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([1.0, -2.0])
    loss, stats = trajectory_pg_loss(logp, logp.detach(), adv, 0.2)
    loss.backward()
    # on-policy: r = 1, d loss / d logp_{x,k} = -A(x) / (B * P)
    assert torch.allclose(logp.grad, -adv.unsqueeze(1).expand(2, 2) / 4)
    assert stats["clip_frac"] == 0.0
    far = torch.tensor([[0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]])  # r = e (> 1 + eps) and 1/e (< 1 - eps)
    loss, stats = trajectory_pg_loss(far, old, torch.tensor([1.0, -1.0]), 0.2)
    loss.backward()
    # A > 0, r = e: clipped branch taken (no gradient); A > 0, r = 1/e: unclipped (gradient -r A / 4)
    # A < 0, r = e: unclipped (gradient -r A / 4); A < 0, r = 1/e: clipped (no gradient)
    e = math.e
    expected = torch.tensor([[0.0, -(1 / e) / 4], [e / 4, 0.0]])
    assert torch.allclose(far.grad, expected)
    assert stats["clip_frac"] == 1.0
    with pytest.raises(ValueError, match="advantages"):
        trajectory_pg_loss(logp, logp.detach(), adv[:1], 0.2)
