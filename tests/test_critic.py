"""The PPO actor-critic advantage: V_phi(prompt) fitted by MSE, A = R - V before the fit, exact resume; and a
short RLlib run with ``advantage="critic"`` (prompted and unprompted)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from sepo_ray.sepo import Critic, ValueNet, critic_advantages, explained_variance, fit_value, value_loss

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


def test_critic_scores_with_the_value_before_its_fit():
    prompts, rewards = _prompts(64, seed=2), _mean_reward(_prompts(64, seed=2))
    critic = Critic(num_tokens=4, prompt_length=3, hidden=16, lr=1e-2, steps=5, seed=0)
    first, stats1 = critic.advantages(prompts, rewards, normalize=False)
    # first batch: V starts at the batch's mean reward (b set to the mean residual), so sum A = 0
    assert float(first.sum()) == pytest.approx(0.0, abs=1e-4)
    before = critic.values(prompts)
    second, stats2 = critic.advantages(prompts, rewards, normalize=False)
    torch.testing.assert_close(second, rewards - before.double(), rtol=0, atol=0)  # A = R - V(before the fit)
    assert not torch.equal(critic.values(prompts), before)  # ... and then V was fitted
    assert stats2["value_loss"] == pytest.approx(float((before.double() - rewards).pow(2).mean()), rel=1e-6)
    assert stats2["fit_loss"] < stats2["value_loss"] < stats1["value_loss"]
    assert set(stats1) == {"value_loss", "explained_var", "fit_loss", "value_mean"}


def test_critic_state_round_trip_is_exact():
    prompts, rewards = _prompts(32, seed=4), _mean_reward(_prompts(32, seed=4))
    a = Critic(num_tokens=4, prompt_length=3, hidden=8, steps=3, seed=0)
    for _ in range(2):
        a.advantages(prompts, rewards)
    b = Critic(num_tokens=4, prompt_length=3, hidden=8, steps=3, seed=9)  # other init: the state overrides it
    b.set_state(a.get_state())
    assert b.fits == 2
    for _ in range(2):  # the same advantages and the same fits (Adam moments restored, not reset)
        (adv_a, stats_a), (adv_b, stats_b) = a.advantages(prompts, rewards), b.advantages(prompts, rewards)
        assert torch.equal(adv_a, adv_b) and stats_a == stats_b
    fresh = Critic(num_tokens=4, prompt_length=3, hidden=8, steps=3, seed=9)
    fresh.net.load_state_dict(a.net.state_dict())  # same weights, no Adam moments: a different next fit
    fresh.fits = a.fits
    a.advantages(prompts, rewards)
    fresh.advantages(prompts, rewards)
    assert not torch.equal(fresh.values(prompts), a.values(prompts))


# ------------------------------------------------------------------------------------------ RLlib runs
ECHO = "tests.prompt_task:EchoTask"


@pytest.mark.slow
def test_rllib_critic_run_on_prompts_logs_stats_and_moves_the_value(ray_session):
    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.rllib.algorithm import _prompts as episode_prompts

    cfg = (
        SEPOConfig()
        .sepo(task=ECHO, advantage="critic", prompts_per_batch=4, group_size=2, denoise_steps=4, kl_steps=2)
        .sepo(snis_samples=2, critic_hidden=8)
        .training(lr=3e-3)
        .debugging(seed=0)
    )
    algo = cfg.build_algo()
    try:
        critic = algo._critic
        assert critic is not None and critic.net.prompt_length == 4
        pool = algo.config.task_spec().prompts()
        before = critic.values(pool).clone()
        results = [algo.train() for _ in range(2)]
        for res in results:
            stats = res["sepo"]
            for key in ("critic_value_loss", "critic_explained_var", "critic_fit_loss", "critic_value_mean"):
                assert key in stats, sorted(stats)
            assert np.isfinite(stats["critic_value_loss"]) and stats["critic_fit_loss"] >= 0
            assert np.isfinite(res["learners"]["default_policy"]["total_loss"])
        assert critic.fits == 2 and not torch.equal(critic.values(pool), before)
        # the driver reads each episode's prompt (one of the task's) from its first observation
        episodes = algo.env_runner.sample(num_timesteps=8, random_actions=False)
        prompts = episode_prompts([e for e in episodes if len(e) > 0])
        assert prompts.shape[1] == 4
        assert {tuple(p.tolist()) for p in prompts} <= {tuple(p.tolist()) for p in pool}
    finally:
        algo.stop()


@pytest.mark.slow
def test_critic_run_on_the_toy_task_resumes_exactly(ray_session, tmp_path):
    """An unprompted task (V is one scalar): 2 iterations, then 1 + resume + 1, give the same history and the
    same critic."""
    from sepo_ray.run import main

    small = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4", "--no-eval"]
    small += ["--set", "advantage=critic", "--set", "critic_steps=4"]

    def run(out, *extra):
        return main(["toy", "--output", str(tmp_path / out), *extra])

    assert run("whole", "--iterations", "2", *small) == 0
    assert run("part", "--iterations", "1", *small) == 0
    assert run("part", "--iterations", "2", "--resume", "--no-eval") == 0
    keys = ("iteration", "reward_mean", "reward_median", "kl", "clip_frac")
    whole, part = (
        json.loads((tmp_path / d / "result.json").read_text())["history"] for d in ("whole", "part")
    )
    assert len(whole) == 2 and [[h[k] for k in keys] for h in part] == [[h[k] for k in keys] for h in whole]
    critic_keys = sorted(
        k for k in whole[-1] if k.startswith("critic_")
    )  # the critic's fit, kept per iteration
    assert "critic_explained_var" in critic_keys and all(
        np.isfinite(h[k]) for h in whole for k in critic_keys
    )
    # the critic after iteration 2: weights, Adam moments and fit count equal to the uninterrupted run's
    # (a critic not restored would restart from its init and fit count 0 at the resumed iteration)
    saved = []
    for d in ("whole", "part"):
        with open(tmp_path / d / "checkpoints" / "iter_0002" / "algorithm_state.pkl", "rb") as f:
            critic = Critic(num_tokens=4)
            critic.set_state(pickle.load(f)["sepo_critic"])
            saved.append(critic)
    assert saved[0].fits == saved[1].fits == 2
    assert torch.equal(saved[0].net.bias, saved[1].net.bias)
    moments = [c.optimizer.state_dict()["state"][0] for c in saved]
    assert all(torch.equal(moments[0][k], moments[1][k]) for k in ("step", "exp_avg", "exp_avg_sq"))
