"""Prompt-conditioned generation: clamped prompts, neighbours and SNIS sites in the completion only, GRPO groups
of one prompt, and an exact resume of a prompted run."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch

from sepo_ray import diffusion
from sepo_ray.sepo import draw_snis_sites, sample_positions
from sepo_ray.tasks import get_task

ECHO = "tests.prompt_task:EchoTask"


def _prompt(task, n):
    pool = task.prompts()
    return pool[torch.arange(n) % len(pool)]  # (n, P)


def test_sampler_clamps_the_prompt_and_scores_only_the_completion():
    task = get_task(ECHO)
    model = task.build_denoiser()
    prompt = _prompt(task, 16)
    out = diffusion.sample(
        model, 16, task.length, 4, generator=torch.Generator().manual_seed(0), prompt=prompt
    )
    given = prompt != task.num_tokens
    assert torch.equal(out.x[:, : task.prompt_length][given], prompt[given])
    assert (out.x != task.num_tokens).all()  # nothing left masked
    # the recorded path's score equals the sampler's log-prob: prompt positions contribute nothing
    rec = diffusion.sample(
        model,
        4,
        task.length,
        3,
        generator=torch.Generator().manual_seed(1),
        prompt=prompt[:4],
        record_path=True,
    )
    torch.testing.assert_close(
        diffusion.score_path(model, rec.path).double(), rec.log_prob, rtol=0, atol=1e-5
    )
    with pytest.raises(ValueError, match="corrector_steps must be 0 with a prompt"):
        diffusion.sample(model, 16, task.length, 4, corrector_steps=1, prompt=prompt)


def test_positions_and_snis_sites_stay_in_the_completion():
    free = torch.ones(64, 10, dtype=torch.bool)
    free[:, :3] = False
    free[::2, 3] = False  # rows of two prompt lengths
    g = torch.Generator().manual_seed(0)
    positions, weight = sample_positions(64, 10, 2, generator=g, free=free)
    assert free.gather(1, positions).all()
    torch.testing.assert_close(weight, free.sum(1).double() / 2)
    sites = draw_snis_sites(positions, 4, 5, 10, generator=g, free=free)  # (64, 2, 3, 5)
    assert free.gather(1, sites.view(64, -1)).all()
    assert set(sites[1::2].unique().tolist()) == set(range(3, 10))  # every free position is reachable


def test_free_position_subsampling_is_unbiased_exactly():
    """E over the uniform K-subsets of the C free positions of (C / K) sum_k g(l_k) = sum over free positions."""
    g = torch.tensor([0.3, -1.0, 2.0, 0.7, 5.0], dtype=torch.float64)
    free = torch.tensor([False, False, True, True, True])
    subsets = list(itertools.combinations([2, 3, 4], 2))
    mean = sum(3 / 2 * g[list(s)].sum() for s in subsets) / len(subsets)
    assert float(mean) == pytest.approx(float(g[free].sum()), abs=1e-12)
    draws = torch.stack(
        [
            sample_positions(1, 5, 2, generator=torch.Generator().manual_seed(i), free=free[None])[0][0]
            for i in range(600)
        ]
    )
    counts = torch.bincount(draws.view(-1), minlength=5)
    assert counts[:2].sum() == 0 and (counts[2:] - 400).abs().max() < 60  # uniform over the free ones


def test_env_gives_each_group_one_prompt():
    from sepo_ray.envs import SequenceBanditEnv

    env = SequenceBanditEnv(
        {"task": ECHO, "num_envs": 8, "group_size": 4, "reward": "tests.prompt_task:echo"}
    )
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8, 2 + 4)
    assert len(set(obs[:4, 1])) == 1 and len(set(obs[4:, 1])) == 1
    assert np.array_equal(obs[0, 2:], np.asarray(get_task(ECHO).prompts()[int(obs[0, 1])], dtype=np.float32))
    with pytest.raises(ValueError, match="multiple of group_size"):
        SequenceBanditEnv({"task": ECHO, "num_envs": 6, "group_size": 4, "reward": "tests.prompt_task:echo"})


def test_env_trains_on_a_prompts_file_and_bad_files_fail_before_ray(tmp_path, capsys):
    from sepo_ray.envs import SequenceBanditEnv

    from sepo_ray.cli.run import main

    path = tmp_path / "prompts.txt"
    path.write_text("GG\nT\n")
    env = SequenceBanditEnv(
        {
            "task": ECHO,
            "num_envs": 8,
            "group_size": 4,
            "reward": "tests.prompt_task:echo",
            "prompts_file": str(path),
        }
    )
    obs, _ = env.reset(seed=0)
    mask = float(get_task(ECHO).num_tokens)
    allowed = {(2.0, 2.0, mask, mask), (3.0, mask, mask, mask)}  # GG and T, MASK-padded
    assert {tuple(row) for row in obs[:, 2:].tolist()} <= allowed
    cases = {
        str(tmp_path / "nope.txt"): "prompt file .*nope.txt does not exist",
        str(tmp_path / "empty.txt"): "is empty: write one prompt per line",
        str(tmp_path / "blank.txt"): "prompt 2 is empty",
        str(tmp_path / "long.txt"): "prompt 1 must be 1-4 letters",
    }
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("AC\n   \n")
    (tmp_path / "long.txt").write_text("ACGTA\n")
    for bad, message in cases.items():
        assert main([ECHO, "--output", str(tmp_path / "out"), "--set", f"prompts_file={bad}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(message, err[0]), err
    assert main(["toy", "--output", str(tmp_path / "out"), "--set", f"prompts_file={path}"]) == 2
    assert "takes no prompts" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


SMALL = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4", "--no-eval"]


def _run(out, *extra):
    from sepo_ray.cli.run import main

    return main([ECHO, "--output", str(out), *extra])


def test_prompted_run_learns_and_resumes_exactly(ray_session, tmp_path):
    # with prompts clamped, a reward on the completion still rises (before/after on held-out prompts)
    learn = ["--reward", "sepo_ray.tasks.toy:fraction_a", "--set", "lr=3e-3", "--set", "kl_alpha=0.0"]
    learn += ["--set", "denoise_steps=8", "--eval-samples", "128"]
    assert _run(tmp_path / "learn", "--iterations", "10", *learn) == 0
    record = json.loads((tmp_path / "learn" / "result.json").read_text())
    assert record["after"]["user_reward_mean"] > record["before"]["user_reward_mean"] + 0.1, record
    assert _run(tmp_path / "whole", "--iterations", "3", *SMALL) == 0
    assert _run(tmp_path / "part", "--iterations", "2", *SMALL) == 0
    assert _run(tmp_path / "part", "--iterations", "3", "--resume", "--no-eval") == 0
    keys = ("reward_mean", "reward_median", "kl", "clip_frac")
    whole, part = (
        json.loads((tmp_path / d / "result.json").read_text())["history"] for d in ("whole", "part")
    )
    assert [[h[k] for k in keys] for h in part] == [[h[k] for k in keys] for h in whole]
