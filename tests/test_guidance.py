"""SVDD guidance on an exact toy: the selection law, the sampler law it tilts, and every oracle call counted."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sepo_ray.diffusion import LogLinearSchedule, step
from sepo_ray.diffusion.guidance import predicted_clean, selection_probs, svdd_plan, svdd_sample, svdd_step
from sepo_ray.sepo.toy import ExactToy, ToyDenoiser, encode

M, L, T = 2, 2, 2


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ExactToy(ToyDenoiser(M, L), T)


def count_zeros(x):
    """A toy value: 1.5 x the number of token 0 (x (N, L) -> (N,))."""
    return 1.5 * (x == 0).sum(-1).double()


def svdd_law(toy, value, candidates, temperature):
    """Exact law of the clean sample when every step is an SVDD step: per state z, every M-tuple of iid next
    states weighted by prod P(c_i | z) (the sampler's step), times the selection law svdd_step gives it."""
    sched, states = LogLinearSchedule(), toy.states  # (S, L)
    num = len(states)
    mu = torch.zeros(num, dtype=torch.float64)
    mu[toy.start_index] = 1.0
    for k in range(T, 0, -1):
        t, s = k / T, (k - 1) / T
        kernel = torch.zeros(num, num, dtype=torch.float64)
        for i in torch.nonzero(mu).flatten().tolist():
            z = states[i].expand(num, L)
            with torch.no_grad():
                p = step(toy.model, z, t, s, sched, z_next=states).log_prob.exp()  # (S,)
            support = torch.nonzero(p > 0).flatten().tolist()
            tuples = torch.tensor(list(itertools.product(support, repeat=candidates)))  # (U, M)
            res = svdd_step(
                toy.model, states[i].expand(len(tuples), L), t, s, sched, value, candidates, temperature,
                candidates=states[tuples],
            )  # fmt: skip
            weight = p[tuples].prod(dim=1)  # (U,)
            kernel[i].index_add_(0, tuples.flatten(), (weight[:, None] * res.probs).flatten())
        mu = mu @ kernel
    return mu[toy.clean_index]  # (C,)


def test_selection_law_by_hand():
    v = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]])
    assert torch.equal(
        selection_probs(v, 0.0), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    )
    e = [math.exp(1 / 0.5), math.exp(3 / 0.5), math.exp(2 / 0.5)]
    assert selection_probs(v, 0.5)[0].tolist() == pytest.approx([x / sum(e) for x in e])
    assert selection_probs(v, 1e-3)[0].argmax() == 1 and selection_probs(v, 1e-3)[0, 1] > 1 - 1e-12
    with pytest.raises(ValueError, match="NaN"):
        selection_probs(torch.tensor([[float("nan"), 0.0]]), 1.0)


def test_temperature_zero_keeps_the_best_candidate(toy):
    sched = LogLinearSchedule()
    z = torch.full((1, L), M)
    cands = torch.tensor([[[0, 1], [1, 1], [0, 0]]])  # (1, 3, L): values 1.5, 0, 3
    res = svdd_step(toy.model, z, 0.5, 0.0, sched, count_zeros, 3, 0.0, candidates=cands)
    assert (
        res.z_next.tolist() == [[0, 0]] and res.values.tolist() == [[1.5, 0.0, 3.0]] and res.oracle_calls == 3
    )
    # a batch: each row keeps its own best candidate
    z2 = torch.full((2, L), M)
    cands2 = torch.tensor([[[1, 1], [0, 1]], [[0, 0], [1, 0]]])  # values [0, 1.5], [3, 1.5]
    res2 = svdd_step(toy.model, z2, 0.5, 0.0, sched, count_zeros, 2, 0.0, candidates=cands2)
    assert res2.z_next.tolist() == [[0, 1], [0, 0]] and res2.values.tolist() == [[0.0, 1.5], [3.0, 1.5]]
    # a masked candidate is valued at its predicted clean sequence (argmax of the model there)
    logits = toy.model(torch.tensor([[M, 1]]))
    assert predicted_clean(logits, torch.tensor([[M, 1]])).tolist() == [[int(logits[0, 0].argmax()), 1]]


def test_constant_value_gives_exactly_the_plain_sampler_law(toy):
    for temperature in (0.0, 0.7):
        law = svdd_law(toy, lambda x: torch.zeros(len(x)), candidates=2, temperature=temperature)
        assert torch.allclose(law, toy.pi().detach(), atol=1e-12, rtol=0)


def test_svdd_sampler_draws_the_enumerated_law_and_tilts_towards_the_value(toy):
    exact = svdd_law(toy, count_zeros, candidates=2, temperature=0.5)
    assert exact.sum().item() == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    res = svdd_sample(toy.model, count_zeros, n, L, T, 2, (1, 2), temperature=0.5, generator=g)
    freq = torch.bincount(encode(res.x, M), minlength=M**L).double() / n
    assert 0.5 * (freq - exact).abs().sum() < 0.01
    values = count_zeros(toy.clean)
    plain = toy.pi().detach()
    assert (exact * values).sum() > (plain * values).sum() + 0.2
    assert res.oracle_calls == n * 2 * 2


@pytest.mark.parametrize(
    "calls,steps,most,expected",
    [(8, 32, 4, (4, (1, 17))), (32, 32, 4, (4, (1, 5, 9, 13, 17, 21, 25, 29))), (3, 32, 4, (3, (1,))),
     (200, 32, 4, (6, tuple(range(1, 33))))],
)  # fmt: skip
def test_svdd_plan_spends_at_most_the_budget(calls, steps, most, expected):
    num, ks = svdd_plan(calls, steps, most)
    assert (num, ks) == expected and num * len(ks) <= calls


def test_svdd_calls_counted_equal_the_budget(toy):
    seen = []

    def value(x):
        seen.append(len(x))
        return count_zeros(x)

    design, budget = 8, 64
    num, ks = svdd_plan(budget // design, T, 4)
    res = svdd_sample(toy.model, value, design, L, T, num, ks, generator=torch.Generator().manual_seed(1))
    assert sum(seen) == res.oracle_calls == budget
