"""Token proposals for large vocabularies: J of the m - 1 other tokens per position, weight (m - 1) / J.

Exact checks on enumerable toys: J = m - 1 is today's estimator bit for bit; averaging over every J-subset
reproduces the all-tokens sum, loss and gradient to float64 precision; sampled subsets are uniform; SNIS
with proposals equals the all-tokens SNIS at the proposed neighbours when the sites correspond.
"""

import itertools

import pytest
import torch

from sepo_ray.sepo import (
    draw_snis_sites,
    log_pi_hat,
    log_scores,
    neighbour_mask,
    neighbours,
    other_tokens,
    ppo_coefficients,
    proposal_mask,
    propose_tokens,
    sample_positions,
    sepo_loss,
    snis_log_pi_hat,
    snis_terms,
)
from sepo_ray.sepo.toy import ExactToy, ToyDenoiser, clean_states, encode, toy_reward


def flat_grad(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def subset_tokens(x, positions, m, shifts):
    """The proposal made of the shifts (J,) in 1..m-1 at every (b, k): v = (x_l + j) mod m -> (B, K, J)."""
    current = x.gather(1, positions)  # (B, K)
    return (current.unsqueeze(-1) + torch.tensor(shifts)) % m  # (B, K, J)


def all_subsets(m, j):
    """Every J-subset of the shifts 1..m-1, i.e. (through v = (x_l + shift) mod m, a bijection) of the m - 1
    other tokens at any (b, k). Using the same subset at every (b, k) and averaging over the subsets gives
    the exact expectation under independent uniform draws per (b, k): the estimator is a sum over (b, k) of
    terms that each depend on their own subset only, and each (b, k) sees every subset equally often."""
    return list(itertools.combinations(range(1, m), j))


def toy_setup(m=4, length=5, batch=3, k=2, seed=0):
    torch.manual_seed(seed)
    model = ToyDenoiser(m, length)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, m, (batch, length), generator=g)
    positions, _ = sample_positions(batch, length, k, generator=g)
    return model, x, positions


@pytest.mark.parametrize("estimator", ["clean", "conditional"])
def test_all_tokens_is_todays_estimator_bit_for_bit(estimator):
    m, length = 4, 5
    model, x, positions = toy_setup(m, length)
    for j in (None, m - 1):
        g = torch.Generator().manual_seed(7)
        state = g.get_state()
        tokens, weight = propose_tokens(x, positions, m, j, generator=g)
        assert torch.equal(tokens, other_tokens(x, positions, m)) and weight == 1.0
        assert torch.equal(g.get_state(), state)  # no random numbers drawn: the stream is unchanged
        assert torch.equal(proposal_mask(tokens, m), neighbour_mask(x, positions, m))
    # the same seed gives the same sites, terms and pi_hat with others = all m - 1 tokens as without
    sites = draw_snis_sites(positions, m, 3, length, generator=torch.Generator().manual_seed(1))
    same = draw_snis_sites(positions, m, 3, length, torch.Generator().manual_seed(1), others=tokens)
    assert torch.equal(sites, same)
    for num, site in ((3, sites), (3, None), (0, None)):
        old = log_pi_hat(model, x, positions, num, estimator, torch.Generator().manual_seed(2), sites=site)
        new = log_pi_hat(
            model, x, positions, num, estimator, torch.Generator().manual_seed(2), sites=site, others=tokens
        )
        assert torch.equal(old, new)
    old_t = snis_terms(model, x, positions, 2, estimator, torch.Generator().manual_seed(3))
    new_t = snis_terms(model, x, positions, 2, estimator, torch.Generator().manual_seed(3), others=tokens)
    assert all(torch.equal(a, b) for a, b in zip(old_t, new_t))


def test_average_over_all_subsets_is_the_restricted_sum():
    """E_S[((m-1)/J) sum_{v in S} g(v)] = sum_{v != x_l} g(v), for an arbitrary g and for the SEPO loss."""
    m, length, j = 5, 4, 2
    model, x, positions = toy_setup(m, length, batch=3, k=2)
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 2, m, dtype=torch.float64, generator=gen)  # (B, K, m)
    full = (g * neighbour_mask(x, positions, m)).sum(-1)  # (B, K)
    subsets = all_subsets(m, j)
    assert len(subsets) == 6
    weight = (m - 1) / j
    est = [weight * (g * proposal_mask(subset_tokens(x, positions, m, s), m)).sum(-1) for s in subsets]
    assert torch.allclose(torch.stack(est).mean(0), full, rtol=1e-14, atol=1e-14)
    assert min((e - full).abs().max().item() for e in est) > 1e-3  # a single subset is not the sum
    # the drawn proposal is one of the enumerated subsets, with the same weight
    drawn, w = propose_tokens(x, positions, m, j, generator=gen)
    assert w == weight
    shifts = ((drawn - x.gather(1, positions).unsqueeze(-1)) % m).tolist()
    assert all(tuple(row) in subsets for rows in shifts for row in rows)
    # the actual SEPO summand: coefficients x log-score through `sepo_loss`, position weight x (m-1)/J
    log_score = log_scores(model, x, positions, "conditional")  # (B, K, m), grad
    pi_hat = log_pi_hat(model, x, positions, 0, "conditional").exp()  # (B, K, m)
    adv = torch.randn(3, dtype=torch.float64, generator=gen)
    coef = ppo_coefficients(torch.ones_like(pi_hat), adv, pi_hat, clip_eps=0.2)
    pos_weight = length / 2
    params = list(model.parameters())
    loss_full, _ = sepo_loss(log_score, coef, neighbour_mask(x, positions, m), position_weight=pos_weight)
    losses = [
        sepo_loss(
            log_score,
            coef,
            proposal_mask(subset_tokens(x, positions, m, s), m),
            position_weight=pos_weight * weight,
        )[0]
        for s in subsets
    ]
    mean_loss = torch.stack(losses).mean()
    assert mean_loss.item() == pytest.approx(loss_full.item(), rel=1e-13, abs=1e-15)
    assert rel_err(flat_grad(mean_loss, params), flat_grad(loss_full, params)) < 1e-12


@pytest.mark.parametrize("score", ["exact", "conditional"])
@pytest.mark.parametrize("num_positions", [None, 2])
def test_expected_gradient_over_subsets_equals_all_tokens_on_exact_toy(score, num_positions):
    """On the exact toy, every x enumerated and weighted by pi(x), exact pi(y) weights (on-policy, r = 1):
    the Hamming-1 SEPO gradient with J = 2 of m - 1 = 3 tokens per position (and optionally K = 2 of L = 3
    positions), averaged over every subset, equals the all-tokens (all-positions) gradient."""
    m, length, j = 4, 3, 2
    torch.manual_seed(1)
    model = ToyDenoiser(m, length)
    toy = ExactToy(model, 3)
    rewards = toy_reward(m, length, seed=1)
    params = list(model.parameters())
    x = clean_states(m, length)  # (C, L)
    c = x.shape[0]
    log_pi = toy.log_pi()  # (C,), grad
    pi = log_pi.exp().detach()

    def loss_at(positions, mask, position_weight):
        y = neighbours(x, positions, m)  # (C, K, m, L)
        if score == "exact":
            log_score = log_pi[encode(y, m)] - log_pi.view(c, 1, 1)  # (C, K, m)  log pi(y) - log pi(x)
        else:
            log_score = log_scores(model, x, positions, "conditional")  # (C, K, m)
        pi_hat = pi[encode(y, m)]  # (C, K, m) exact pi(y)
        coef = ppo_coefficients(torch.ones_like(pi_hat), rewards, pi_hat, 0.2) * (pi * c).view(c, 1, 1)
        return sepo_loss(log_score, coef, mask, position_weight=position_weight)[0]

    every = torch.arange(length).expand(c, length)  # (C, L)
    expected = flat_grad(loss_at(every, neighbour_mask(x, every, m), 1.0), params)
    k = length if num_positions is None else num_positions
    grads = []
    for pos in itertools.combinations(range(length), k):
        positions = torch.tensor(pos).expand(c, k)  # (C, K)
        for s in all_subsets(m, j):
            mask = proposal_mask(subset_tokens(x, positions, m, s), m)  # (C, K, m)
            grads.append(flat_grad(loss_at(positions, mask, (length / k) * (m - 1) / j), params))
    assert len(grads) == (3 if num_positions is None else 9)
    assert rel_err(torch.stack(grads).mean(0), expected) < 1e-12
    assert min(rel_err(g, expected) for g in grads) > 1e-3  # each single draw is genuinely different


def test_sampled_subsets_are_uniform_distinct_and_exclude_x_l():
    m, j = 5, 2
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, m, (6000, 3), generator=gen)
    positions, _ = sample_positions(6000, 3, 2, generator=gen)
    tokens, weight = propose_tokens(x, positions, m, j, generator=gen)
    assert tokens.shape == (6000, 2, j) and tokens.dtype == torch.long and weight == (m - 1) / j
    current = x.gather(1, positions).unsqueeze(-1)  # (B, K, 1)
    assert not (tokens == current).any()  # never x_l
    assert (tokens[..., 0] != tokens[..., 1]).all()  # no duplicates
    mask = proposal_mask(tokens, m)  # (B, K, m)
    assert (mask.sum(-1) == j).all()
    # each v != x_l proposed with frequency J / (m - 1), relative to x_l and in absolute terms
    shifts = (tokens - current) % m  # (B, K, J) in 1..m-1
    freq = torch.bincount(shifts.reshape(-1), minlength=m)[1:] / (6000 * 2)
    assert (freq - j / (m - 1)).abs().max() < 0.02
    for v in range(m):
        rows = current.squeeze(-1) != v
        assert abs(mask[..., v][rows].double().mean().item() - j / (m - 1)) < 0.03
    # each of the C(4, 2) = 6 subsets equally likely
    codes = (shifts.sort(-1).values * torch.tensor([m, 1])).sum(-1)  # (B, K)
    counts = torch.tensor([(codes == a * m + b).sum().item() for a, b in all_subsets(m, j)]) / (6000 * 2)
    assert (counts - 1 / 6).abs().max() < 0.015
    # a larger vocabulary: distinct, in range, never x_l
    big = torch.randint(0, 50, (64, 8), generator=gen)
    pos, _ = sample_positions(64, 8, 3, generator=gen)
    t, w = propose_tokens(big, pos, 50, 7, generator=gen)
    assert w == 49 / 7 and (proposal_mask(t, 50).sum(-1) == 7).all()
    assert not (t == big.gather(1, pos).unsqueeze(-1)).any()


def test_bad_arguments_name_themselves():
    model, x, positions = toy_setup(4, 5)
    for bad in (0, 4, -1, 9):
        with pytest.raises(ValueError, match="num_proposals"):
            propose_tokens(x, positions, 4, bad)
    with pytest.raises(ValueError, match="tokens"):
        proposal_mask(torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="tokens"):
        proposal_mask(torch.full((1, 1, 1), 4), 4)
    tokens, _ = propose_tokens(x, positions, 4, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="others"):
        log_pi_hat(model, x, positions, 2, others=tokens[:1])
    with pytest.raises(ValueError, match="others"):  # a proposal equal to x_l is not a neighbour
        log_pi_hat(model, x, positions, 0, others=x.gather(1, positions).unsqueeze(-1))
    with pytest.raises(ValueError, match="others"):
        draw_snis_sites(positions, 4, 2, 5, others=tokens[0])
    with pytest.raises(ValueError, match="sites"):  # all-tokens sites (B, K, m-1, M) with J = 2 proposals
        log_pi_hat(model, x, positions, 2, sites=draw_snis_sites(positions, 4, 2, 5), others=tokens)


class CountingModel(torch.nn.Module):
    """Counts the sequences the denoiser is run on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.num_tokens, self.mask_id, self.rows = model, model.num_tokens, model.mask_id, 0

    def forward(self, z):
        self.rows += z.shape[0]
        return self.model(z)


@pytest.mark.parametrize("estimator", ["clean", "conditional"])
def test_snis_with_proposals_matches_all_tokens_at_proposed(estimator):
    m, length, big_m, j = 5, 4, 3, 2
    model, x, positions = toy_setup(m, length, batch=2, k=2)
    gen = torch.Generator().manual_seed(0)
    full_sites = draw_snis_sites(positions, m, big_m, length, generator=gen)  # (B, K, m-1, M)
    tokens, _ = propose_tokens(x, positions, m, j, generator=gen)  # (B, K, J)
    assert draw_snis_sites(positions, m, big_m, length, gen, others=tokens).shape == (2, 2, j, big_m)
    index = (tokens - x.gather(1, positions).unsqueeze(-1)) % m - 1  # (B, K, J): row j of `other_tokens`
    assert torch.equal(other_tokens(x, positions, m).gather(-1, index), tokens)
    sites = full_sites.gather(2, index.unsqueeze(-1).expand(-1, -1, -1, big_m))  # (B, K, J, M)
    counting = CountingModel(model)
    full_t = snis_terms(
        model, x, positions, big_m, estimator, torch.Generator().manual_seed(1), sites=full_sites
    )
    prop_t = snis_terms(
        counting, x, positions, big_m, estimator, torch.Generator().manual_seed(2), sites=sites, others=tokens
    )
    per_sample = 2 * 2 * j * big_m  # B K J M
    assert counting.rows == (per_sample if estimator == "conditional" else 2 * per_sample)
    assert prop_t.sites.shape == (2, 2, j, big_m) and torch.equal(prop_t.others, tokens)

    def pick(t):
        return t.gather(2, index.unsqueeze(-1).expand(-1, -1, -1, big_m))  # (B, K, J, M)

    # terms that depend on the sites only (not on the drawn z) agree exactly at the proposed neighbours
    assert torch.allclose(prop_t.log_q_y_given_z, pick(full_t.log_q_y_given_z), atol=1e-12)
    mask = proposal_mask(tokens, m)
    lp_full = log_pi_hat(
        model, x, positions, big_m, estimator, torch.Generator().manual_seed(1), sites=full_sites
    )
    lp_prop = log_pi_hat(
        model, x, positions, big_m, estimator, torch.Generator().manual_seed(2), sites=sites, others=tokens
    )
    assert lp_prop.shape == (2, 2, m)
    assert (lp_prop[~mask] == 0).all()  # unproposed tokens (and x_l): 0, outside the loss
    own = snis_log_pi_hat(prop_t.log_q_y_given_z, prop_t.log_ratio_z_over_y, prop_t.log_q_z_given_y)
    assert torch.allclose(lp_prop.gather(-1, tokens), own, atol=1e-12)
    if estimator == "conditional":  # conditional SNIS depends on the sites only: equal to all-tokens SNIS
        assert torch.allclose(lp_prop[mask], lp_full[mask], atol=1e-12)
    else:  # clean: check the proposed terms against a loop over (b, k, j, i)
        for b, kk, jj, i in itertools.product(range(2), range(2), range(j), range(big_m)):
            y = x[b].clone()
            y[positions[b, kk]] = tokens[b, kk, jj]
            site, tok = prop_t.sites[b, kk, jj, i].item(), prop_t.tokens[b, kk, jj, i].item()
            z = y.clone()
            z[site] = tok
            expect = (
                0.0 if tok == y[site] else -torch.log_softmax(model(z[None]), -1)[0, site, y[site]].item()
            )
            assert prop_t.log_ratio_z_over_y[b, kk, jj, i].item() == pytest.approx(expect, abs=1e-12)
    # single-sample path (M = 0): the same entries at the proposed tokens, 0 elsewhere
    none_full = log_pi_hat(model, x, positions, 0, estimator)
    none_prop = log_pi_hat(model, x, positions, 0, estimator, others=tokens)
    assert torch.equal(none_prop[mask], none_full[mask]) and (none_prop[~mask] == 0).all()
    assert not none_prop.requires_grad
