"""Masked diffusion: schedule, forward process, scorable sampler steps, correctors, ELBO (exact toy checks)."""

import itertools
import math

import pytest
import torch

from sepo_ray.diffusion import (
    LogLinearSchedule,
    MaskingProcess,
    corrector_step,
    elbo,
    mdlm_loss,
    remask_step,
    sample,
    score_path,
    step,
    time_grid,
    unmask_probability,
)
from sepo_ray.sepo.toy import ExactToy, ToyDenoiser, clean_states, encode, pretrain_toy

M, L = 3, 3


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ToyDenoiser(M, L)


def all_states(m=M, length=L):
    return torch.tensor(list(itertools.product(range(m + 1), repeat=length)))  # (S, L)


def test_schedule_and_process():
    sched = LogLinearSchedule(eps=1e-3)
    assert sched.alpha(0.0) == 1.0 and sched.alpha(1.0) == pytest.approx(1e-3)
    sigma, dsigma = sched(torch.tensor([0.5]))
    assert sigma.item() == pytest.approx(-math.log(1 - 0.999 * 0.5))
    assert dsigma.item() == pytest.approx(0.999 / (1 - 0.999 * 0.5))
    proc = MaskingProcess(4)
    assert proc.mask_id == 4
    x0 = torch.zeros(4000, 50, dtype=torch.long)
    z = proc.q_sample(x0, torch.full((4000,), 0.3), generator=torch.Generator().manual_seed(0))
    frac = (z == 4).double().mean().item()
    assert frac == pytest.approx(1 - sched.alpha(0.3), abs=0.005)
    assert ((z == 0) | (z == 4)).all()
    grid = time_grid(4)
    assert torch.allclose(grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))


def test_step_log_prob_is_exact_transition(model):
    """Enumerate every next state from a partly masked z: probabilities sum to 1 and match the hand formula."""
    sched = LogLinearSchedule()
    z = torch.tensor([[M, 1, M]])
    nxt = all_states()  # (S, L)
    t, s = 0.75, 0.5
    logits = model(z)
    lp = step(model, z.expand(len(nxt), L), t, s, sched, z_next=nxt).log_prob  # (S,)
    assert torch.exp(lp).sum().item() == pytest.approx(1.0, abs=1e-12)
    p = unmask_probability(sched, t, s)
    probs = torch.softmax(logits, -1)[0]  # (L, m)
    # hand: position 0 unmasks to 2, position 1 clean, position 2 stays masked
    target = torch.tensor([[2, 1, M]])
    expect = p * probs[0, 2].item() * (1 - p)
    got = step(model, z, t, s, sched, z_next=target).log_prob.exp().item()
    assert got == pytest.approx(expect, rel=1e-12)
    # a clean token that changes is impossible
    assert step(model, z, t, s, sched, z_next=torch.tensor([[2, 0, M]])).log_prob.item() == -math.inf
    # last step (s = 0) unmasks everything: staying masked has probability 0
    assert step(model, z, 0.25, 0.0, sched, z_next=target).log_prob.item() == -math.inf
    lp0 = step(model, z.expand(len(nxt), L), 0.25, 0.0, sched, z_next=nxt).log_prob
    assert torch.exp(lp0).sum().item() == pytest.approx(1.0, abs=1e-12)


def test_step_sampling_frequencies(model):
    sched = LogLinearSchedule()
    z = torch.full((20000, L), M)
    out = step(model, z, 1.0, 0.5, sched, generator=torch.Generator().manual_seed(0))
    emp = torch.bincount(encode(out.z_next, M + 1), minlength=(M + 1) ** L).double() / len(z)
    exact = step(model, z[:1].expand((M + 1) ** L, L), 1.0, 0.5, sched, z_next=all_states()).log_prob.exp()
    assert (emp - exact.detach()).abs().max().item() < 0.015
    assert torch.allclose(out.log_prob, step(model, z, 1.0, 0.5, sched, z_next=out.z_next).log_prob)


def test_corrector_step_is_a_normalised_scorable_kernel(model):
    sched = LogLinearSchedule()
    z = torch.tensor([[0, M, 2]])
    s, dt = 0.25, 0.25
    states = all_states()
    pairs = torch.tensor(list(itertools.product(range(len(states)), repeat=2)))
    z_mid, z_next = states[pairs[:, 0]], states[pairs[:, 1]]
    lp = corrector_step(model, z.expand(len(pairs), L), s, sched, dt, z_mid=z_mid, z_next=z_next).log_prob
    assert torch.exp(lp).sum().item() == pytest.approx(1.0, abs=1e-12)
    # forward half alone: clean tokens masked w.p. 1 - alpha(s + dt) / alpha(s), MASK stays
    rho = 1 - sched.alpha(s + dt) / sched.alpha(s)
    got = remask_step(z, s, s + dt, sched, M, z_next=torch.tensor([[M, M, 2]])).log_prob.exp().item()
    assert got == pytest.approx(rho * (1 - rho), rel=1e-12)
    # a sampled corrector step re-scores to the same log-prob
    out = corrector_step(model, z.expand(64, L), s, sched, dt, generator=torch.Generator().manual_seed(1))
    again = corrector_step(model, z.expand(64, L), s, sched, dt, z_mid=out.z_mid, z_next=out.z_next).log_prob
    assert torch.allclose(out.log_prob, again)
    assert torch.isfinite(out.log_prob).all()


@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_sample_matches_exact_law_and_rescoring(model, corrector_steps):
    steps = 3
    gen = torch.Generator().manual_seed(0)
    out = sample(
        model,
        20000,
        L,
        steps,
        corrector_steps=corrector_steps,
        generator=gen,
        batch_size=7000,
        record_states_at=torch.tensor([3, 1]),
        record_path=True,
    )
    assert out.x.shape == (20000, L) and (out.x < M).all()
    assert out.states.shape == (20000, 2, L) and (out.states[:, 0] == M).all()
    toy = ExactToy(model, steps, corrector_steps=corrector_steps)
    emp = torch.bincount(encode(out.x, M), minlength=M**L).double() / len(out.x)
    assert (emp - toy.pi().detach()).abs().max().item() < 0.015
    # the recorded path re-scored (with grad) gives the log-prob recorded at sampling time
    n = 50
    from sepo_ray.diffusion import Path

    sub = Path(out.path.states[:n], out.path.ops)
    rescored = score_path(model, sub)
    assert rescored.requires_grad
    assert torch.allclose(rescored, out.log_prob[:n], atol=1e-10)
    # state before step 1 is the one recorded by record_path at that point
    idx = len(out.path.ops) - (1 + 2 * corrector_steps)
    assert torch.equal(out.states[:n, 1], out.path.states[:n, idx])


@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_the_sampler_records_each_transitions_log_prob_as_score_path_computes_it(model, corrector_steps):
    """Path.log_probs (what a rollout keeps instead of re-scoring its path) equals score_path under the
    sampling weights bit for bit, remask halves included, and sums to the sample's log-probability."""
    from sepo_ray.models.conv import ConvDenoiser

    gen = torch.Generator().manual_seed(3)
    out = sample(model, 40, L, 4, corrector_steps=corrector_steps, generator=gen, record_path=True)
    assert out.path.log_probs.shape == (40, len(out.path.ops))
    with torch.no_grad():
        assert torch.equal(out.path.log_probs, score_path(model, out.path, reduce=False))
    assert torch.allclose(out.path.log_probs.sum(dim=1), out.log_prob, atol=1e-12)
    torch.manual_seed(1)  # float32 convolutions: the same calls on the same states give the same bits
    conv = ConvDenoiser(hidden_dim=16, num_cnn_stacks=1, num_tokens=4).eval()
    with torch.no_grad():
        out = sample(conv, 6, 20, 5, generator=torch.Generator().manual_seed(0), record_path=True)
        assert out.path.log_probs.dtype == torch.float32
        assert torch.equal(out.path.log_probs, score_path(conv, out.path, reduce=False))


def test_sample_progress_callback_and_errors(model):
    calls = []
    sample(model, 3, L, 4, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4, 4)
    with pytest.raises(ValueError, match="record_states_at"):
        sample(model, 3, L, 4, record_states_at=torch.tensor([0]))
    with pytest.raises(ValueError, match="steps"):
        sample(model, 3, L, 0)
    with pytest.raises(ValueError, match="z_next"):
        step(
            model,
            torch.full((2, L), M),
            1.0,
            0.5,
            LogLinearSchedule(),
            z_next=torch.zeros(3, L, dtype=torch.long),
        )


def exact_elbo(model, x, steps, sched):
    """E[elbo] by enumerating every mask pattern: sum_k sum_masks P(mask) p_k sum_{masked} log p(x_l | z)."""
    total = 0.0
    a1 = sched.alpha(1.0)
    for k in range(steps, 0, -1):
        t, s = k / steps, (k - 1) / steps
        move = (1 - sched.alpha(t)) / (1 - a1)
        p = unmask_probability(sched, t, s)
        for pattern in itertools.product([0, 1], repeat=L):
            mask = torch.tensor(pattern, dtype=torch.bool)
            prob = move ** mask.sum().item() * (1 - move) ** (L - mask.sum().item())
            z = torch.where(mask, torch.full_like(x, M), x)
            ll = torch.log_softmax(model(z[None]), -1)[0].gather(-1, x[:, None]).squeeze(-1)
            total += prob * p * (ll * mask).sum().item()
    return total


def test_elbo_lower_bounds_exact_log_likelihood(model):
    steps = 3
    sched = LogLinearSchedule()
    toy = ExactToy(model, steps)
    log_pi = toy.log_pi().detach()
    xs = clean_states(M, L)[[0, 5, 13, 26]]
    for x in xs:
        expect = exact_elbo(model, x, steps, sched)
        draws = elbo(model, x.expand(4000, L), steps, generator=torch.Generator().manual_seed(0)).detach()
        sem = draws.std().item() / math.sqrt(len(draws))
        assert draws.mean().item() == pytest.approx(expect, abs=4 * sem + 1e-9)
        assert expect <= log_pi[encode(x, M)].item() + 1e-12
        assert expect < 0


def test_mdlm_loss_decreases_when_model_fits_data():
    torch.manual_seed(1)
    model = ToyDenoiser(M, L)
    target = torch.zeros(M**L, dtype=torch.float64)
    target[[1, 7, 20]] = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    data = clean_states(M, L)[torch.multinomial(target, 1000, replacement=True)]
    proc = MaskingProcess(M)
    before = mdlm_loss(model, data, proc, generator=torch.Generator().manual_seed(0), antithetic=True)
    assert before.shape == (1000,) and torch.isfinite(before).all() and (before >= 0).all()
    pretrain_toy(model, target, iters=60, batch=128)
    after = mdlm_loss(model, data, proc, generator=torch.Generator().manual_seed(0), antithetic=True)
    assert after.mean().item() < 0.5 * before.mean().item()
    # entropy of the target bounds the (continuous-time) NELBO from below, up to MC error
    entropy = -(target[target > 0] * target[target > 0].log()).sum().item()
    assert after.mean().item() > entropy - 0.1


def test_path_ops_match_the_sampler():
    from sepo_ray.diffusion import path_ops, sample

    torch.manual_seed(0)
    model = ToyDenoiser(num_tokens=3, length=4)
    for corr in (0, 2):
        out = sample(
            model, 3, 4, 5, corrector_steps=corr, record_path=True, generator=torch.Generator().manual_seed(0)
        )
        assert out.path.ops == path_ops(5, corr)
        assert len(path_ops(5, corr)) == 5 * (1 + 2 * corr)
