"""The trajectory objective on a subset of each path's transitions: unbiased for the whole path, exactly."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sepo_ray.sepo import trajectory_pg_loss, update
from sepo_ray.sepo.toy import ToyDenoiser


def test_the_subset_law_is_uniform_without_replacement_and_drawn_for_each_row():
    g = torch.Generator().manual_seed(0)
    chosen, weight = update.path_subset(4, 2, 12000, g)
    assert weight == 2.0 and chosen.shape == (12000, 2) and bool((chosen[:, 0] < chosen[:, 1]).all())
    subsets = list(itertools.combinations(range(4), 2))
    counts = {s: 0 for s in subsets}
    for row in chosen.tolist():
        counts[tuple(row)] += 1
    assert max(abs(c / 12000 - 1 / 6) for c in counts.values()) < 0.015
    pairs = {}
    for a, b in zip(chosen[0::2].tolist(), chosen[1::2].tolist()):  # rows drawn independently: 36 pairs alike
        pairs[(tuple(a), tuple(b))] = pairs.get((tuple(a), tuple(b)), 0) + 1
    assert len(pairs) == 36 and max(abs(c / 6000 - 1 / 36) for c in pairs.values()) < 0.01
    everything, one = update.path_subset(4, None, 3, g)
    assert everything.tolist() == [[0, 1, 2, 3]] * 3 and one == 1.0
    assert update.path_subset(4, 9, 3, g)[1] == 1.0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_reweighted_subset_loss_is_unbiased_in_value_and_gradient(k):
    """Averaged over every choice of a k-subset of P = 4 transitions in each of 3 rows (independent, each as
    likely), (P / k) x the subsets' clipped surrogate equals the whole path's, value and gradient, to float64
    precision."""
    g = torch.Generator().manual_seed(k)
    num, steps = 3, 4
    theta = torch.randn(num, steps, generator=g, dtype=torch.float64, requires_grad=True)
    old = theta.detach() + 0.3 * torch.randn(num, steps, generator=g, dtype=torch.float64)  # some clipped
    adv = torch.randn(num, generator=g, dtype=torch.float64)
    row = 1.0 / torch.arange(1, num + 1, dtype=torch.float64)
    full, _ = trajectory_pg_loss(theta, old, adv, 0.2, row_weight=row)
    (full_grad,) = torch.autograd.grad(full, theta)
    subsets = list(itertools.combinations(range(steps), k))
    joint = list(itertools.product(subsets, repeat=num))  # a subset per row
    value, grad = 0.0, torch.zeros_like(theta)
    for choice in joint:
        idx = torch.tensor(choice)  # (N, k)
        loss, _ = trajectory_pg_loss(
            theta.gather(1, idx), old.gather(1, idx), adv, 0.2, row_weight=row * steps / k
        )
        (g_s,) = torch.autograd.grad(loss, theta)
        value, grad = value + float(loss.detach()) / len(joint), grad + g_s / len(joint)
    assert value == pytest.approx(float(full.detach()), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad, full_grad, rtol=1e-12, atol=1e-12)
    assert len(joint) == math.comb(steps, k) ** num


def test_chosen_transitions_score_as_the_whole_path_does_in_one_model_call():
    """score_transitions = score_path(reduce=False) gathered at each row's own transitions, value and gradient,
    predictor and corrector (re-mask) halves alike, with a single model call."""
    from sepo_ray import diffusion

    torch.manual_seed(0)
    model = ToyDenoiser(3, 4).double()
    out = diffusion.sample(model, 5, 4, 3, corrector_steps=1, generator=torch.Generator().manual_seed(2),
                           record_path=True)  # fmt: skip
    path = diffusion.Path(out.path.states, out.path.ops)  # P = 9 transitions: reverse, remask, reverse, ...
    chosen = torch.tensor(
        [[0, 1, 4], [1, 2, 8], [3, 5, 7], [0, 6, 8], [2, 4, 6]]
    )  # (N, k), other ones per row
    whole = diffusion.score_path(model, path, reduce=False)  # (N, P)
    g_whole = torch.autograd.grad(
        (whole.gather(1, chosen) * torch.arange(1.0, 4.0)).sum(), model.parameters()
    )
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    part = diffusion.score_transitions(model, path, chosen)  # (N, k)
    hook.remove()
    assert len(calls) == 1 and part.shape == (5, 3)
    torch.testing.assert_close(part, whole.gather(1, chosen), rtol=1e-12, atol=1e-12)
    g_part = torch.autograd.grad((part * torch.arange(1.0, 4.0)).sum(), model.parameters())
    torch.testing.assert_close(g_part, g_whole, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="chosen transitions must lie in 0..8"):
        diffusion.score_transitions(model, path, chosen + 1)


def test_the_objective_on_every_step_is_the_whole_path_and_a_subset_scores_each_rows_own_steps(monkeypatch):
    torch.manual_seed(0)
    model = ToyDenoiser(3, 4).double()
    spec_kw = dict(num_tokens=3, objective="trajectory", clip_eps=0.2, kl_alpha=0.0, zero_clipped=True,
                   snis_samples=1, denoise_steps=6, corrector_steps=0, kl_steps=2, noise_states=2,
                   neighbour_positions=None, neighbour_tokens=None, score_estimator="conditional")  # fmt: skip
    full_spec = update.UpdateSpec(trajectory_steps=None, **spec_kw)
    g = torch.Generator().manual_seed(1)
    batch = update.rollout(model, 8, 4, full_spec, generator=g)
    batch = {**batch, "advantages": torch.randn(8, generator=g, dtype=torch.float64)}
    whole, _ = update.trajectory_objective(model, batch, full_spec)
    every, _ = update.trajectory_objective(model, batch, update.UpdateSpec(trajectory_steps=6, **spec_kw))
    assert float(every.detach()) == pytest.approx(float(whole.detach()), rel=1e-12)
    # 2-step subsets, a different one in each row: over 15 draws, row n takes subset (i + 2n) mod 15, so each
    # row meets all 15 once and the mean of the 15 losses is the whole path's (the loss adds up its rows)
    subsets = list(itertools.combinations(range(6), 2))
    losses = []
    for i in range(15):
        chosen = torch.tensor([subsets[(i + 2 * n) % 15] for n in range(8)])  # (N, 2)

        def fixed(num_steps, k, num_rows, generator=None, chosen=chosen):
            return chosen, num_steps / k

        monkeypatch.setattr(update, "path_subset", fixed)
        loss, _ = update.trajectory_objective(model, batch, update.UpdateSpec(trajectory_steps=2, **spec_kw))
        losses.append(float(loss))
    assert sum(losses) / len(losses) == pytest.approx(float(whole), rel=1e-10)
    assert len(set(losses)) > 1


def test_the_rollout_keeps_the_samplers_step_log_probs_without_calling_the_model_again():
    """old_step_log_prob is score_path's value bit for bit, and the rollout calls the model only for the sampler's
    own steps: no second pass over the path."""
    torch.manual_seed(0)
    model = ToyDenoiser(3, 4).double()
    spec = update.UpdateSpec(
        num_tokens=3, objective="trajectory", clip_eps=0.2, kl_alpha=0.0, zero_clipped=True, snis_samples=1,
        denoise_steps=6, corrector_steps=1, kl_steps=2, noise_states=2, neighbour_positions=None,
        neighbour_tokens=None, score_estimator="conditional", trajectory_steps=None,
    )  # fmt: skip
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    batch = update.rollout(model, 8, 4, spec, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 6 * 2  # a predictor and a corrector's reverse half per step
    from sepo_ray import diffusion

    ops = diffusion.path_ops(6, 1)
    with torch.no_grad():
        again = diffusion.score_path(model, diffusion.Path(batch["path_states"], ops), reduce=False).float()
    assert torch.equal(batch["old_step_log_prob"], again)
