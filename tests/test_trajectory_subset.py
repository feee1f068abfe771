"""The trajectory objective on a subset of each path's transitions: unbiased for the whole path, exactly."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sepo_ray.sepo import trajectory_pg_loss, update
from sepo_ray.sepo.toy import ToyDenoiser


def test_the_subset_law_is_uniform_without_replacement():
    g = torch.Generator().manual_seed(0)
    counts = {}
    for _ in range(6000):
        chosen, weight = update.path_subset(4, 2, g)
        assert weight == 2.0 and chosen.tolist() == sorted(set(chosen.tolist()))
        counts[tuple(chosen.tolist())] = counts.get(tuple(chosen.tolist()), 0) + 1
    assert set(counts) == set(itertools.combinations(range(4), 2))
    assert max(abs(c / 6000 - 1 / 6) for c in counts.values()) < 0.02
    everything, one = update.path_subset(4, None, g)
    assert everything.tolist() == [0, 1, 2, 3] and one == 1.0
    assert update.path_subset(4, 9, g)[1] == 1.0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_the_reweighted_subset_loss_is_unbiased_in_value_and_gradient(k):
    """Averaged over every k-subset of P = 5 transitions (each as likely), (P / k) x the subset's clipped
    surrogate equals the whole path's, value and gradient, to float64 precision."""
    g = torch.Generator().manual_seed(k)
    num, steps = 6, 5
    theta = torch.randn(num, steps, generator=g, dtype=torch.float64, requires_grad=True)
    old = theta.detach() + 0.3 * torch.randn(num, steps, generator=g, dtype=torch.float64)  # some clipped
    adv = torch.randn(num, generator=g, dtype=torch.float64)
    row = 1.0 / torch.arange(1, num + 1, dtype=torch.float64)
    full, _ = trajectory_pg_loss(theta, old, adv, 0.2, row_weight=row)
    (full_grad,) = torch.autograd.grad(full, theta)
    subsets = list(itertools.combinations(range(steps), k))
    value, grad = 0.0, torch.zeros_like(theta)
    for subset in subsets:
        idx = torch.tensor(subset)
        loss, _ = trajectory_pg_loss(theta[:, idx], old[:, idx], adv, 0.2, row_weight=row * steps / k)
        (g_s,) = torch.autograd.grad(loss, theta)
        value, grad = value + float(loss.detach()) / len(subsets), grad + g_s / len(subsets)
    assert value == pytest.approx(float(full), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad, full_grad, rtol=1e-12, atol=1e-12)
    assert math.comb(steps, k) == len(subsets)


def test_the_objective_on_every_step_is_the_whole_path_and_a_subset_scores_only_its_steps(monkeypatch):
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
    assert float(every) == pytest.approx(float(whole), rel=1e-12)
    # a 2-step subset scores exactly those transitions: the mean over all 15 subsets is the whole path's loss
    losses = []
    for subset in itertools.combinations(range(6), 2):
        chosen = torch.tensor(subset)

        def fixed(num_steps, k, generator=None, chosen=chosen):
            return chosen, num_steps / k

        monkeypatch.setattr(update, "path_subset", fixed)
        loss, _ = update.trajectory_objective(model, batch, update.UpdateSpec(trajectory_steps=2, **spec_kw))
        losses.append(float(loss))
    assert sum(losses) / len(losses) == pytest.approx(float(whole), rel=1e-10)
    assert len(losses) == 15


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
