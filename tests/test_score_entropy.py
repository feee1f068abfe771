"""Score-entropy family (SEDD, absorbing graph): exact checks on an enumerable toy with a perfect score net.

The perfect net is the exact concrete score of p_sigma = p_data pushed through the absorbing forward process,
computed by enumeration: log s(z)_{l, v} = log p_sigma(z^{l <- v}) - log p_sigma(z) for every state z in {0..m}^L.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from sepo_ray import sepo
from sepo_ray.diffusion import LogLinearNoise, LogLinearSchedule, MaskedView, MaskingProcess, mdlm_loss
from sepo_ray.diffusion import sample as masked_sample
from sepo_ray.diffusion import score_entropy as se
from sepo_ray.sepo.toy import ExactToy, clean_states, encode

M, L = 3, 3
V = M + 1


def all_states(m=M, length=L):
    return torch.tensor(list(itertools.product(range(m + 1), repeat=length)))  # (S, L)


def data_law(seed=0, m=M, length=L):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(m**length, generator=gen, dtype=torch.float64) ** 2 + 0.02  # (C,) strictly positive
    return p / p.sum()


class PerfectNet(nn.Module):
    """Exact absorbing score of an explicit data law p_data (C,): net(z, sigma) -> (B, L, V), 0 at z_l.

    p_sigma(z) = e^{-sigma #clean} (1 - e^{-sigma})^{#mask} P_data(clean tokens of z), so
    log s(z)_{l, v} = [log P(clean of z') - log P(clean of z)] + (#mask(z') - #mask(z)) log expm1(sigma).
    """

    def __init__(self, p_data, m=M, length=L):
        super().__init__()
        self.vocab_size, self.mask_id, self.length = m + 1, m, length
        states = all_states(m, length)  # (S, L)
        clean = clean_states(m, length)  # (C, L)
        compatible = ((states[:, None] == clean[None]) | (states[:, None] == m)).all(-1)  # (S, C)
        log_pc = torch.log((compatible * p_data).sum(-1))  # (S,)
        nmask = (states == m).sum(-1)  # (S,)
        nb = states[:, None, None, :].expand(-1, length, m + 1, length).clone()  # (S, L, V, L)
        for pos in range(length):
            nb[:, pos, :, pos] = torch.arange(m + 1)
        idx = encode(nb, m + 1)  # (S, L, V)
        self.register_buffer("base", log_pc[idx] - log_pc[:, None, None])  # (S, L, V)
        self.register_buffer("dmask", (nmask[idx] - nmask[:, None, None]).double())  # (S, L, V)

    def forward(self, z, sigma):
        idx = encode(z, self.vocab_size)  # (B,)
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(z.shape[0])
        return self.base[idx] + self.dmask[idx] * torch.log(torch.expm1(sigma))[:, None, None]  # (B, L, V)


class RandomNet(nn.Module):
    """A small sigma-conditioned score net (not exact): embedding + MLP, SEDD's output shift
    -log expm1(sigma) - log(V - 1) (+ `shift`), own-token entry zeroed."""

    def __init__(self, m=M, length=L, hidden=16, seed=0, shift=0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.vocab_size, self.length, self.shift = m + 1, length, shift
        self.embed = nn.Embedding(m + 1, 4, dtype=torch.float64)
        self.mlp = nn.Sequential(
            nn.Linear(4 * length + 1, hidden, dtype=torch.float64),
            nn.Tanh(),
            nn.Linear(hidden, length * (m + 1), dtype=torch.float64),
        )

    def forward(self, z, sigma):
        h = torch.cat([self.embed(z).flatten(1), torch.log(sigma)[:, None]], dim=-1)  # (B, 4L + 1)
        scale = torch.log(torch.expm1(sigma)) + math.log(self.vocab_size - 1)  # (B,)
        out = self.mlp(h).view(z.shape[0], self.length, self.vocab_size) - scale[:, None, None] + self.shift
        return out.scatter(-1, z[..., None], 0.0)  # (B, L, V)


class GeometricNoise:
    """sigma(t) = a^{1 - t} b^t (SEDD's geometric noise), dsigma = sigma log(b / a); for the Euler/analytic split."""

    def __call__(self, t):
        sigma = 1e-3 ** (1 - t) * 5.0**t
        return sigma, sigma * math.log(5.0 / 1e-3)


NOISE = LogLinearNoise()
STATES = all_states()
CLEAN = clean_states(M, L)
CLEAN_INDEX = encode(CLEAN, V)


@pytest.fixture(scope="module")
def p_data():
    return data_law()


@pytest.fixture(scope="module")
def perfect(p_data):
    return PerfectNet(p_data)


def kernel(net, t, s, noise=NOISE, method="analytic", states=STATES):
    """Exact (S, S) transition matrix P(z, z') = prod_l P_l(z'_l | z) of one step."""
    sigma = torch.full((len(states),), float(noise(t)[0]), dtype=torch.float64)
    logp = se.transition_log_probs(net(states, sigma), states, t, s, noise, method)  # (S, L, V)
    lp = sum(logp[:, pos][:, states[:, pos]] for pos in range(states.shape[1]))  # (S, S)
    return lp.exp()


def exact_law(net, steps, noise=NOISE, method="analytic", start=None):
    """Law of the final state of the T-step sampler by propagating distributions through the kernels: (S,)."""
    mu = torch.zeros(len(STATES), dtype=torch.float64)
    mu[encode(torch.full((L,), M) if start is None else start, V)] = 1.0
    for k in range(steps, 0, -1):
        mu = mu @ kernel(net, k / steps, (k - 1) / steps, noise, method)  # (S,)
    return mu


def conditional(p_data, z):
    """Brute-force p_data(x_l = v | unmasked tokens of z): (L, m) for one state z (L,)."""
    ok = ((CLEAN == z) | (z == M)).all(-1)  # (C,)
    w = p_data * ok  # (C,)
    return torch.stack([torch.bincount(CLEAN[:, pos], w, minlength=M) for pos in range(L)]) / w.sum()


# ------------------------------------------------------------------------------------------------------


def test_noise_and_forward_process():
    noise = LogLinearNoise(eps=1e-3)
    assert isinstance(noise, LogLinearSchedule)
    sigma, dsigma = noise(0.5)
    assert sigma == pytest.approx(-math.log(1 - 0.999 * 0.5), rel=1e-14)
    assert dsigma == pytest.approx(0.999 / (1 - 0.999 * 0.5), rel=1e-14)
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    sig, dsig = noise(t)
    assert torch.allclose(torch.exp(-sig), noise.alpha(t), atol=1e-15)  # alpha_t = exp(-sigma(t))
    h = 1e-6
    fd = (noise(t[1:-1] + h)[0] - noise(t[1:-1] - h)[0]) / (2 * h)
    assert torch.allclose(fd, dsig[1:-1], rtol=1e-7)
    with pytest.raises(ValueError, match="t must"):
        noise(1.5)
    with pytest.raises(ValueError, match="eps"):
        LogLinearNoise(eps=1.0)
    x0 = torch.zeros(4000, 50, dtype=torch.long)
    z = se.q_sample(x0, 0.7, M, generator=torch.Generator().manual_seed(0))
    assert ((z == 0) | (z == M)).all()
    assert (z == M).double().mean().item() == pytest.approx(1 - math.exp(-0.7), abs=0.005)
    with pytest.raises(ValueError, match="sigma"):
        se.q_sample(x0, torch.ones(3), M)
    with pytest.raises(ValueError, match="x0"):
        se.q_sample(x0[0], 0.7, M)


def test_perfect_net_is_the_exact_concrete_score(p_data, perfect):
    """Toy check: the net's entries are log p_sigma(z') - log p_sigma(z) by brute force over x0 and masks."""
    sigma = 0.8
    alpha = math.exp(-sigma)

    def p_sigma(z):
        ok = ((CLEAN == z) | (z == M)).all(-1)  # (C,)
        nm = int((z == M).sum())
        return float((p_data * ok).sum()) * alpha ** (L - nm) * (1 - alpha) ** nm

    out = perfect(STATES, torch.full((len(STATES),), sigma, dtype=torch.float64))  # (S, L, V)
    for i in [0, 5, 17, 40, 63]:
        z = STATES[i]
        for pos, v in itertools.product(range(L), range(V)):
            y = z.clone()
            y[pos] = v
            assert out[i, pos, v].item() == pytest.approx(math.log(p_sigma(y) / p_sigma(z)), abs=1e-12)
        masked = z == M
        cond = conditional(p_data, z)  # (L, m)
        if masked.any():  # s = p(v | unmasked) / expm1(sigma) at masked positions
            expect = torch.log(cond[masked]) - math.log(math.expm1(sigma))
            assert torch.allclose(out[i, masked, :M], expect, atol=1e-12)


def test_score_entropy_is_nonnegative_and_least_at_the_exact_scores(p_data, perfect):
    """Expected DSE over (x0, z) enumerated exactly: the perfect net is the minimiser, with zero gradient."""
    gen = torch.Generator().manual_seed(0)
    ls = torch.randn(500, L, V, generator=gen, dtype=torch.float64) * 3  # any log-scores
    z = torch.randint(0, V, (500, L), generator=gen)
    x0 = torch.randint(0, M, (500, L), generator=gen)
    dse = se.score_entropy(ls, z, x0, torch.rand(500, generator=gen, dtype=torch.float64) * 4 + 1e-3)
    assert (dse >= -1e-12).all() and (dse[z != M] == 0).all()

    sigma = 0.7
    masks = torch.tensor(list(itertools.product([0, 1], repeat=L)), dtype=torch.bool)  # (2^L, L)
    x_rep = CLEAN.repeat_interleave(len(masks), 0)  # (C 2^L, L)
    m_rep = masks.repeat(len(CLEAN), 1)  # (C 2^L, L)
    z_all = torch.where(m_rep, torch.full_like(x_rep, M), x_rep)
    nm = m_rep.sum(-1).double()
    weight = p_data.repeat_interleave(len(masks)) * math.exp(-sigma) ** (L - nm) * (-math.expm1(-sigma)) ** nm
    base = perfect(z_all, torch.full((len(z_all),), sigma, dtype=torch.float64))  # (N, L, V)
    idx = encode(z_all, V)

    def expected(delta):
        return (weight * se.score_entropy(base + delta[idx], z_all, x_rep, sigma).sum(-1)).sum()

    delta = torch.zeros(len(STATES), L, V, dtype=torch.float64, requires_grad=True)
    best = expected(delta)
    (grad,) = torch.autograd.grad(best, delta)
    assert grad.abs().max().item() < 1e-12  # stationary at the exact ratios
    for seed in range(5):
        pert = 0.3 * torch.randn(
            len(STATES), L, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        assert expected(pert).item() > best.item() + 1e-4
    other = RandomNet()(z_all, torch.full((len(z_all),), sigma, dtype=torch.float64))
    assert (weight * se.score_entropy(other, z_all, x_rep, sigma).sum(-1)).sum().item() > best.item()


def test_loss_equals_mdlm_loss_for_exact_scores(p_data, perfect):
    """With exact scores, dsigma * DSE = MDLM weight * cross-entropy, draw by draw (same generator)."""
    x0 = CLEAN[torch.multinomial(p_data, 512, replacement=True, generator=torch.Generator().manual_seed(1))]
    loss, stats = se.score_entropy_loss(perfect, x0, NOISE, torch.Generator().manual_seed(2), antithetic=True)
    ref = mdlm_loss(MaskedView(perfect), x0, MaskingProcess(M, NOISE), torch.Generator().manual_seed(2), True)
    assert torch.allclose(loss, ref, rtol=1e-10, atol=1e-12)
    assert set(stats) == {"masked_fraction", "t_mean", "loss_mean"}
    net = RandomNet()
    loss, _ = se.score_entropy_loss(net, x0, NOISE, torch.Generator().manual_seed(2))
    loss.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="t must"):
        se.score_entropy_loss(net, x0, NOISE, t=torch.zeros(512))


@pytest.mark.parametrize("method", se.METHODS)
def test_step_matches_hand_formula_and_is_normalised(method):
    net = RandomNet(seed=3)
    z = torch.tensor([[M, 1, M]])
    t, s = 0.75, 0.5
    ls = net(z, torch.tensor([NOISE(t)[0]], dtype=torch.float64))[0]  # (L, V)
    c = math.expm1(NOISE(t)[0] - NOISE(s)[0]) if method == "analytic" else (t - s) * NOISE(t)[1]
    tot = ls[:, :M].exp().sum(-1)  # (L,)
    norm = torch.clamp(c * tot, min=1.0)  # (L,)
    expect = c * ls[0, 2].exp() / norm[0] * torch.clamp(1 - c * tot[2], min=0) / norm[2]
    got = se.step(net, z, t, s, NOISE, method, z_next=torch.tensor([[2, 1, M]])).log_prob.exp()
    assert got.item() == pytest.approx(expect.item(), rel=1e-12)
    rate = se.reverse_rate(ls[None], z, NOISE(t)[1])[0]  # (L, m): dsigma s_v at masked l, 0 at clean l
    assert torch.allclose(rate[0], NOISE(t)[1] * ls[0, :M].exp()) and (rate[1] == 0).all()
    assert (c * tot[[0, 2]] < 1).all()  # masked positions of this net at these times: no clamping
    if method == "euler":  # Euler: P(reveal v) = (t - s) * reverse rate
        one = se.step(net, z, t, s, NOISE, method, z_next=torch.tensor([[2, 1, 0]])).log_prob.exp()
        assert one.item() == pytest.approx(((t - s) * rate[0, 2] * (t - s) * rate[2, 0]).item(), rel=1e-12)
    for tt, ss in [(t, s), (1.0, 0.9), (0.25, 0.0)]:
        lp = se.step(net, z.expand(len(STATES), L), tt, ss, NOISE, method, z_next=STATES).log_prob
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # final denoise (s = 0): v with probability s_v / sum_u s_u, no MASK left
    last = se.step(net, z, 0.25, 0.0, NOISE, method, z_next=torch.tensor([[0, 1, 2]])).log_prob.exp()
    ls0 = net(z, torch.tensor([NOISE(0.25)[0]], dtype=torch.float64))[0]
    p0 = torch.softmax(ls0[:, :M], -1)
    assert last.item() == pytest.approx((p0[0, 0] * p0[2, 2]).item(), rel=1e-12)
    assert se.step(net, z, 0.25, 0.0, NOISE, method, z_next=z).log_prob.item() == -math.inf
    # a clean token never moves; invalid ids are impossible
    assert se.step(net, z, t, s, NOISE, method, z_next=torch.tensor([[M, 2, M]])).log_prob.item() == -math.inf
    assert se.step(net, z, t, s, NOISE, method, z_next=torch.tensor([[V, 1, M]])).log_prob.item() == -math.inf
    # clamped regime (huge scores, c S > 1): staying masked has probability 0, rows still sum to 1
    big = RandomNet(seed=3, shift=8.0)
    lp = se.step(big, z.expand(len(STATES), L), t, s, NOISE, method, z_next=STATES).log_prob
    assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    assert se.step(big, z, t, s, NOISE, method, z_next=torch.tensor([[0, 1, M]])).log_prob.item() == -math.inf
    # sampling mode returns its own log-prob, and gradients flow
    out = se.step(net, z.expand(200, L), t, s, NOISE, method, generator=torch.Generator().manual_seed(0))
    again = se.step(net, z.expand(200, L), t, s, NOISE, method, z_next=out.z_next).log_prob
    assert torch.equal(out.log_prob, again) and again.requires_grad


def test_euler_equals_analytic_for_loglinear_noise_only():
    """expm1(sigma(t) - sigma(s)) = (t - s) dsigma(t) for the log-linear noise; not for the geometric one."""
    net = RandomNet(seed=1)
    for t, s in [(1.0, 0.75), (0.5, 0.25)]:
        assert se.step_scale(t, s, NOISE, "euler") == pytest.approx(se.step_scale(t, s, NOISE), rel=1e-12)
        a, e = kernel(net, t, s, NOISE, "analytic"), kernel(net, t, s, NOISE, "euler")
        assert torch.allclose(a, e, rtol=1e-10, atol=1e-14)
    geo, t, s = GeometricNoise(), 0.3, 0.2  # small c S: no clamping, the two laws differ
    assert se.step_scale(t, s, geo, "euler") > 1.1 * se.step_scale(t, s, geo, "analytic")
    a, e = kernel(net, t, s, geo, "analytic"), kernel(net, t, s, geo, "euler")
    assert (a - e).abs().max().item() > 1e-3
    for k in (a, e):
        assert torch.allclose(k.sum(-1), torch.ones(len(STATES), dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("method", se.METHODS)
def test_sample_matches_enumerated_law_and_rescores(method):
    net = RandomNet(seed=2)
    steps = 3
    out = se.sample(
        net, 20000, L, steps, NOISE, method, generator=torch.Generator().manual_seed(0), batch_size=7000,
        record_states_at=torch.tensor([3, 1]), record_path=True,
    )  # fmt: skip
    assert out.x.shape == (20000, L) and (out.x < M).all()
    assert (out.states[:, 0] == M).all() and torch.equal(out.states[:, 1], out.path.states[:, 2])
    law = exact_law(net, steps, NOISE, method)[CLEAN_INDEX].detach()
    assert law.sum().item() == pytest.approx(1.0, abs=1e-12)
    emp = torch.bincount(encode(out.x, M), minlength=M**L).double() / len(out.x)
    assert (emp - law).abs().max().item() < 0.015
    sub = se.Path(out.path.states[:50], out.path.ops)
    rescored = se.score_path(net, sub)
    assert rescored.requires_grad and torch.allclose(rescored, out.log_prob[:50], atol=1e-10)
    # the path log-prob is the sum of the enumerated kernels' entries along the path
    kernels = [kernel(net, t, s, NOISE, method) for _, t, s in out.path.ops]
    idx = encode(sub.states, V)  # (50, T + 1)
    by_kernel = sum(torch.log(kernels[j][idx[:, j], idx[:, j + 1]]) for j in range(steps))
    assert torch.allclose(by_kernel, out.log_prob[:50], atol=1e-10)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_analytic_law_with_exact_scores_equals_masked_sampler_on_masked_view(p_data, perfect, steps):
    """Exact enumeration: the SEDD analytic sampler == the masked family's sampler on MaskedView(perfect)."""
    law = exact_law(perfect, steps)[CLEAN_INDEX]
    masked = ExactToy(MaskedView(perfect), steps, schedule=NOISE).pi()
    assert torch.allclose(law, masked, atol=1e-12)


def test_exact_scores_sampler_converges_to_data(p_data, perfect):
    tv = [0.5 * (exact_law(perfect, steps)[CLEAN_INDEX] - p_data).abs().sum().item() for steps in (1, 8, 64)]
    assert tv[0] > tv[1] > tv[2] and tv[2] < 0.01


def test_prompt_is_clamped_and_conditions_the_law(perfect):
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, M, (6000, 1), generator=gen)
    out = se.sample(perfect, 6000, L, 4, NOISE, prompt=prompt, generator=gen, record_path=True)
    assert torch.equal(out.x[:, :1], prompt) and (out.path.states[:, :, :1] == prompt[:, None]).all()
    assert (out.path.states[:, 0, 1:] == M).all() and (out.x < M).all()
    rows = prompt[:, 0] == 0
    law = exact_law(perfect, 4, start=torch.tensor([0, M, M]))[CLEAN_INDEX]
    emp = torch.bincount(encode(out.x[rows], M), minlength=M**L).double() / rows.sum()
    assert (emp - law).abs().max().item() < 0.03 and law[CLEAN[:, 0] != 0].sum().item() == 0
    assert torch.allclose(se.score_path(perfect, out.path)[:100], out.log_prob[:100], atol=1e-10)
    one = se.sample(perfect, 5, L, 2, NOISE, prompt=torch.tensor([2, 1]), generator=gen)
    assert (one.x[:, :2] == torch.tensor([2, 1])).all()
    with pytest.raises(ValueError, match="prompt"):
        se.sample(perfect, 5, L, 2, prompt=torch.tensor([[M]] * 5))
    with pytest.raises(ValueError, match="prompt"):
        se.sample(perfect, 5, L, 2, prompt=torch.zeros(5, L + 1, dtype=torch.long))


MASKS = torch.tensor(list(itertools.product([0, 1], repeat=L)), dtype=torch.bool)  # (2^L, L)


def integrand(net, sigma):
    """E_{z ~ p_{sigma|0}(.|x)} sum_l DSE_l for every clean x, masks enumerated exactly: (C,)."""
    out = torch.zeros(len(CLEAN), dtype=torch.float64)
    for mk in MASKS:
        z = torch.where(mk, torch.full_like(CLEAN, M), CLEAN)
        prob = math.exp(-sigma) ** int((~mk).sum()) * (-math.expm1(-sigma)) ** int(mk.sum())
        log_score = net(z, torch.full((len(z),), sigma, dtype=torch.float64))
        out += prob * se.score_entropy(log_score, z, CLEAN, sigma).sum(-1)
    return out


def test_elbo_with_exact_scores_is_log_likelihood(p_data):
    """Exact: Gauss-Legendre in t (the integrand is a polynomial of degree L - 1 in t) x enumerated masks gives
    -log p(x) up to the O(eps) prior term; the Monte Carlo ELBO agrees within its standard error."""
    noise = LogLinearNoise(eps=1e-6)
    perfect = PerfectNet(p_data)
    nodes, weights = np.polynomial.legendre.leggauss(4)
    total = sum(
        w / 2 * noise((t + 1) / 2)[1] * integrand(perfect, noise((t + 1) / 2)[0])
        for t, w in zip(nodes, weights)
    )
    assert torch.allclose(-total, torch.log(p_data), atol=1e-4)

    runs = torch.stack(
        [se.elbo(perfect, CLEAN, NOISE, 64, torch.Generator().manual_seed(r)) for r in range(32)]
    )  # 32 independent estimates per x: a t-test with 31 degrees of freedom
    mean, err = runs.mean(0), runs.std(0) / math.sqrt(32)
    assert ((mean - torch.log(p_data)).abs() <= 4.5 * err + 1e-2).all()  # 1e-2: the dropped O(eps L) term
    gen = torch.Generator().manual_seed(5)
    again = se.elbo(perfect, CLEAN, NOISE, 32, torch.Generator().manual_seed(5), batch_size=100)
    assert torch.equal(se.elbo(perfect, CLEAN, NOISE, 32, gen, batch_size=100), again)
    with pytest.raises(ValueError, match="num_draws"):
        se.elbo(perfect, CLEAN, NOISE, 0)


@pytest.mark.parametrize("antithetic", [True, False])
def test_elbo_is_unbiased_for_a_sigma_dependent_net(antithetic):
    """For any net: E elbo = -int_0^{sigma(1)} E_z D dsigma, the reference by quadrature in log sigma."""
    net = RandomNet(seed=6)
    nodes, weights = np.polynomial.legendre.leggauss(96)
    lo, hi = math.log(1e-9), math.log(NOISE(1.0)[0])
    w_nodes = (nodes + 1) / 2 * (hi - lo) + lo
    with torch.no_grad():
        ref = -sum(
            w / 2 * (hi - lo) * math.exp(wn) * integrand(net, math.exp(wn)) for wn, w in zip(w_nodes, weights)
        )
        runs = torch.stack(
            [se.elbo(net, CLEAN, NOISE, 32, torch.Generator().manual_seed(r), antithetic) for r in range(32)]
        )
    mean, err = runs.mean(0), runs.std(0) / math.sqrt(32)
    assert ((mean - ref).abs() <= 4.5 * err + 1e-3).all()
    assert err.max().item() < 0.1


@pytest.mark.parametrize("sigma", ["auto", 0.3, "tensor"])
def test_log_scores_sepo_identity(p_data, perfect, sigma):
    """log s(x)_y = log pi(y) - log pi(x) exactly for exact scores; = sepo.log_scores(MaskedView, conditional)."""
    x = CLEAN  # (C, L)
    positions = torch.arange(L).expand(len(x), L)  # (C, K = L)
    sig = torch.linspace(0.1, 3.0, len(x), dtype=torch.float64) if sigma == "tensor" else sigma
    got = se.log_scores(perfect, x, positions, sigma=sig)  # (C, K, m)
    log_pi = torch.log(p_data)
    y = x[:, None, None, :].expand(-1, L, M, L).clone()  # (C, K, m, L)
    for pos in range(L):
        y[:, pos, :, pos] = torch.arange(M)
    expect = log_pi[encode(y, M)] - log_pi[encode(x, M)][:, None, None]  # (C, K, m)
    assert got.shape == (len(x), L, M) and torch.allclose(got, expect, atol=1e-12)
    for net in (perfect, RandomNet(seed=4)):
        ours = se.log_scores(net, x, positions, sigma=sig, batch_size=7)
        theirs = sepo.log_scores(MaskedView(net, sigma=sig if sigma != "tensor" else 0.5), x, positions)
        if sigma != "tensor":
            assert torch.allclose(ours, theirs, atol=1e-12)
        assert torch.allclose(ours, se.log_scores(net, x, positions, sigma=sig), atol=1e-12)


def test_masked_view_is_the_conditional_denoiser(p_data, perfect):
    for sigma in ("auto", 0.5):
        view = MaskedView(perfect, sigma=sigma)
        assert view.num_tokens == M and view.mask_id == M and view.length == L
        probs = torch.softmax(view(STATES), -1)  # (S, L, m)
        for i in range(len(STATES)):
            masked = STATES[i] == M
            if masked.any():
                assert torch.allclose(probs[i, masked], conditional(p_data, STATES[i])[masked], atol=1e-12)
    view = MaskedView(RandomNet(seed=5))
    assert list(view.parameters())  # the net's parameters, for optimisers
    out = masked_sample(
        view, 50, L, 3, NOISE, generator=torch.Generator().manual_seed(0), record_states_at=[3, 2]
    )
    assert out.x.shape == (50, L) and (out.x < M).all()
    positions = torch.tensor([[0, 2]] * 50)
    pi_hat = sepo.log_pi_hat(view, out.x, positions, 2, generator=torch.Generator().manual_seed(1))
    assert pi_hat.shape == (50, 2, M) and torch.isfinite(pi_hat).all()
    kl = sepo.kl_to_reference(view, MaskedView(RandomNet(seed=5)), out.states, torch.tensor([3, 2]), 3, NOISE)
    assert torch.allclose(kl, torch.zeros_like(kl), atol=1e-12)


class BadNet:
    vocab_size = V

    def __call__(self, z, sigma):
        return torch.zeros(len(z), L)  # no vocabulary axis


def test_errors_name_the_argument(perfect):
    z = torch.full((2, L), M)
    with pytest.raises(ValueError, match="method"):
        se.step(perfect, z, 1.0, 0.5, NOISE, "midpoint")
    with pytest.raises(ValueError, match="times"):
        se.step(perfect, z, 0.5, 0.5, NOISE)
    with pytest.raises(ValueError, match="z_next"):
        se.step(perfect, z, 1.0, 0.5, NOISE, z_next=z[:1])
    with pytest.raises(ValueError, match="mask_id"):
        se.sample(lambda z, s: z, 2, L, 2)
    with pytest.raises(ValueError, match="net must return"):
        se.log_scores(BadNet(), CLEAN[:2], torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="x must"):
        se.log_scores(perfect, z, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="positions"):
        se.log_scores(perfect, CLEAN[:2], torch.full((2, 1), L))
    with pytest.raises(ValueError, match="sigma"):
        se.log_scores(perfect, CLEAN[:2], torch.zeros(2, 1, dtype=torch.long), sigma=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        MaskedView(perfect, sigma="fixed")
    with pytest.raises(ValueError, match="steps"):
        se.sample(perfect, 2, L, 0)
    with pytest.raises(ValueError, match="record_states_at"):
        se.sample(perfect, 2, L, 2, record_states_at=[3])
    with pytest.raises(ValueError, match="path.ops"):
        se.score_path(perfect, se.Path(z[:, None].expand(2, 2, L), [("reverse", 1.0, 0.0)]))


def test_runs_on_the_sedd_transformer():
    """The protocol end to end on the project's SEDD-layout transformer (float32, tiny)."""
    from sepo_ray.models import SEDDTransformer

    torch.manual_seed(0)
    net = SEDDTransformer(
        hidden_size=16, n_heads=2, n_blocks=1, cond_dim=8, vocab_size=6, max_length=16, dropout=0.0
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (4, 8), generator=gen)
    loss, _ = se.score_entropy_loss(net, x, generator=gen)
    loss.mean().backward()
    assert torch.isfinite(loss).all() and all(torch.isfinite(p.grad).all() for p in net.parameters())
    out = se.sample(net, 4, 8, 4, prompt=x[:, :2], generator=gen, record_path=True)
    assert torch.equal(out.x[:, :2], x[:, :2]) and (out.x < 5).all()
    assert torch.allclose(se.score_path(net, out.path).double(), out.log_prob, atol=1e-4)
    assert torch.isfinite(se.elbo(net, x, num_draws=4, generator=gen)).all()
    pos = torch.tensor([[0, 3]] * 4)
    assert torch.allclose(se.log_scores(net, x, pos), sepo.log_scores(MaskedView(net), x, pos), atol=1e-5)
    assert (masked_sample(MaskedView(net), 3, 8, 2, generator=gen).x < 5).all()
