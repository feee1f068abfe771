"""The PPO actor-critic advantage: V_phi(prompt) fitted by MSE, A = R - V before the fit; V_phi in the RLModule
with its optimiser in the Learner, and exact resume (prompted and unprompted RLlib runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sepo_ray.sepo import (
    ValueNet,
    center_value,
    critic_advantages,
    critic_stats,
    explained_variance,
    value_loss,
)

MASK = 4  # vocabulary of 4 tokens, MASK = 4


def _prompts(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3) prompts over 4 tokens, MASK-padded to lengths 1..3."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, 4, (n, 3), generator=g)  # (n, 3)
    lengths = torch.randint(1, 4, (n,), generator=g)  # (n,)
    prompts[torch.arange(3)[None, :] >= lengths[:, None]] = MASK
    return prompts


def _mean_reward(prompts: torch.Tensor) -> torch.Tensor:
    """A known mapping prompt -> mean reward that a plain mean of embeddings cannot express: the first token
    counts for 1, the number of other 'A's (token 0) for 0.25."""
    first = prompts[:, 0].double()
    others = (prompts[:, 1:] == 0).sum(1).double()
    return first + 0.25 * others


def fit_value(net, optimizer, prompts, rewards, steps):
    """Full-batch optimiser steps on the value MSE (what the learner's critic optimiser does, one step an epoch)."""
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss, _ = value_loss(net(prompts), rewards.float())
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return {"fit_loss": value_loss(net(prompts), rewards.float())[1]["value_loss"]}


def test_value_net_fits_a_known_prompt_to_mean_reward_mapping():
    torch.manual_seed(123)  # the noise of the rewards only; the net's init is seeded by itself
    train, test = _prompts(512, seed=0), _prompts(256, seed=1)
    rewards = _mean_reward(train) + 0.1 * torch.randn(512, dtype=torch.float64)  # noisy around the mean
    net = ValueNet(num_tokens=4, prompt_length=3, hidden=32, seed=0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    stats = fit_value(net, optimizer, train, rewards, steps=1500)
    with torch.no_grad():
        predicted = net(test).double()
    truth = _mean_reward(test)
    # on a fresh draw of prompts the value is the mean reward, up to the noise averaged over the few times a
    # rare prompt was seen (84 distinct prompts, reward std ~1.2, noise 0.1); a plain mean of the prompt's
    # embeddings (no position gate) explains ~55 % of the variance here
    error = (predicted - truth).abs()
    assert float(error.mean()) < 0.05 and float(error.max()) < 0.3, error
    assert explained_variance(predicted, truth) > 0.99
    assert 0.005 < stats["fit_loss"] < 0.02  # close to the noise variance 0.01: fitted, not memorised


def test_value_net_without_prompts_is_one_learned_scalar():
    net = ValueNet(num_tokens=4, prompt_length=0, seed=0)
    assert [name for name, _ in net.named_parameters()] == ["bias"]
    empty = torch.empty(5, 0, dtype=torch.long)
    assert torch.equal(net(empty), torch.zeros(5))
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    fit_value(net, optimizer, empty, rewards, steps=300)
    assert float(net.bias.detach()) == pytest.approx(3.0, abs=1e-3)  # the MSE minimiser: the mean reward
    with pytest.raises(ValueError, match=r"prompt must have shape \(N, 0\)"):
        net(torch.zeros(5, 2, dtype=torch.long))


def test_mask_padding_is_ignored():
    """A prompt padded with MASK has the value of the same tokens whatever the padding holds elsewhere."""
    net = ValueNet(num_tokens=4, prompt_length=3, hidden=8, seed=3)
    with torch.no_grad():
        net.embed[MASK] = 100.0  # the MASK row never enters the pooled embedding
        a = net(torch.tensor([[2, 1, MASK], [MASK, MASK, MASK]]))
        net.embed[MASK] = -7.0
        b = net(torch.tensor([[2, 1, MASK], [MASK, MASK, MASK]]))
    assert torch.equal(a, b)
    with torch.no_grad():
        empty = torch.tanh(net.b1) @ net.w2 + net.bias  # an all-MASK prompt: h = 0
    assert float(a[1]) == pytest.approx(float(empty))


def test_value_loss_and_explained_variance_by_hand():
    v, r = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([1.0, 4.0, 1.0])
    loss, stats = value_loss(v, r)
    assert float(loss) == pytest.approx((0 + 4 + 1) / 3) and stats["value_loss"] == pytest.approx(5 / 3)
    # Var(R) = 2, Var(R - V) = Var([0, 2, 1]) = 2/3
    assert explained_variance(v, r) == pytest.approx(1 - (2 / 3) / 2)
    assert explained_variance(r, r) == 1.0 and explained_variance(torch.zeros(3), r) == pytest.approx(0.0)
    assert np.isnan(explained_variance(v, torch.ones(3)))
    with pytest.raises(ValueError, match="values must have the shape of rewards"):
        value_loss(v, r[:2])


def test_critic_advantages_are_reward_minus_value():
    r = torch.tensor([1.0, 3.0, 0.5, 2.0], dtype=torch.float64)
    v = torch.tensor([1.5, 1.0, 0.5, 3.0])
    raw = critic_advantages(r, v, normalize=False)
    assert raw.dtype == torch.float64 and torch.equal(
        raw, torch.tensor([-0.5, 2.0, 0.0, -1.0], dtype=torch.float64)
    )
    rms = (torch.tensor([0.25, 4.0, 0.0, 1.0]).mean()).sqrt()
    torch.testing.assert_close(critic_advantages(r, v), raw / rms, rtol=0, atol=1e-7)
    # not centred: a critic that underestimates every reward gives positive advantages everywhere
    assert (critic_advantages(r, torch.zeros(4)) > 0).all()
    # all residuals equal: +-1, never +-1/eps; all zero: 0
    torch.testing.assert_close(critic_advantages(r, (r - 2.0).float()), torch.ones(4, dtype=torch.float64))
    assert torch.equal(critic_advantages(r, r.float()), torch.zeros(4, dtype=torch.float64))


def test_the_first_batch_centres_the_value_and_later_ones_do_not():
    prompts, rewards = _prompts(64, seed=2), _mean_reward(_prompts(64, seed=2))
    net = ValueNet(num_tokens=4, prompt_length=3, hidden=16, seed=0)
    center_value(net, prompts, rewards)
    with torch.no_grad():
        first = critic_advantages(rewards, net(prompts), normalize=False)
    assert float(first.sum()) == pytest.approx(0.0, abs=1e-4)  # V starts at the batch's mean reward
    net.fits += 1
    bias = net.bias.detach().clone()
    center_value(net, prompts, rewards + 5.0)  # once fitted, no shift
    assert torch.equal(net.bias.detach(), bias)
    with torch.no_grad():
        stats = critic_stats(net(prompts), rewards)
        expected = float((net(prompts).double() - rewards).pow(2).mean())
    assert set(stats) == {"value_loss", "explained_var", "value_mean"}
    assert stats["value_loss"] == pytest.approx(expected, rel=1e-6)
    assert "fits" in net.state_dict()  # checkpointed with the module


# ------------------------------------------------------------------------------------------ RLlib runs
ECHO = "tests.prompt_task:EchoTask"


@pytest.mark.slow
def test_rllib_critic_is_in_the_module_and_its_optimiser_in_the_learner(ray_session):
    from ray.rllib.core import DEFAULT_MODULE_ID

    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.rllib.learner import episode_prompts

    cfg = (
        SEPOConfig()
        .sepo(task=ECHO, advantage="critic", prompts_per_batch=4, group_size=2, denoise_steps=4, kl_steps=2)
        .sepo(snis_samples=2, critic_hidden=8, critic_lr=0.05)
        .training(lr=3e-3)
        .debugging(seed=0)
    )
    algo = cfg.build_algo()
    try:
        learner = algo.learner_group._learner
        module = learner.module[DEFAULT_MODULE_ID].unwrapped()
        assert module.value_net.prompt_length == 4
        optimizers = [name for name, _ in learner.get_optimizers_for_module(DEFAULT_MODULE_ID)]
        assert optimizers == ["default_optimizer", "critic"]
        assert learner.get_optimizer(DEFAULT_MODULE_ID, "critic").param_groups[0]["lr"] == 0.05
        assert not hasattr(algo.env_runner.module, "value_net")  # rollout workers only sample
        pool = algo.config.task_spec().prompts()
        before = module.values(pool).detach().clone()
        results = [algo.train() for _ in range(2)]
        for res in results:
            stats = res["sepo"]
            for key in ("critic_value_loss", "critic_explained_var", "critic_fit_loss", "critic_value_mean"):
                assert key in stats, sorted(stats)
            assert np.isfinite(stats["critic_value_loss"]) and stats["critic_fit_loss"] >= 0
            assert np.isfinite(res["learners"]["default_policy"]["total_loss"])
        assert int(module.value_net.fits) == 2 and not torch.equal(module.values(pool).detach(), before)
        # the learner reads each episode's prompt (one of the task's) from its first observation
        episodes = algo.env_runner.sample(num_timesteps=8, random_actions=False)
        prompts = episode_prompts([e for e in episodes if len(e) > 0])
        assert prompts.shape[1] == 4
        assert {tuple(p.tolist()) for p in prompts} <= {tuple(p.tolist()) for p in pool}
    finally:
        algo.stop()


@pytest.mark.slow
def test_critic_run_on_the_toy_task_resumes_exactly(ray_session, tmp_path):
    """An unprompted task (V is one scalar): 3 iterations, then 1 + resume + 2, give the same history, the
    critic's figures included (they depend on its weights and Adam moments, which only the learner's
    checkpoint restores)."""
    from sepo_ray.cli.run import main

    small = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4", "--no-eval"]
    small += ["--set", "advantage=critic", "--set", "critic_lr=0.05"]

    def run(out, *extra):
        return main(["toy", "--output", str(tmp_path / out), *extra])

    assert run("whole", "--iterations", "3", *small) == 0
    assert run("part", "--iterations", "1", *small) == 0
    assert run("part", "--iterations", "3", "--resume", "--no-eval") == 0
    whole, part = (
        json.loads((tmp_path / d / "result.json").read_text())["history"] for d in ("whole", "part")
    )
    keys = ["iteration", "reward_mean", "reward_median", "kl", "clip_frac"]
    keys += sorted(k for k in whole[-1] if k.startswith("critic_"))
    assert {"critic_explained_var", "critic_fit_loss", "critic_value_mean"} <= set(keys)
    assert len(whole) == 3 and all(
        np.isfinite(h[k]) for h in whole for k in keys if k != "critic_explained_var"
    )
    assert [[h[k] for k in keys] for h in part] == [[h[k] for k in keys] for h in whole]
