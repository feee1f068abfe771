"""SEPO on RLlib: smoke run, checkpoints, fault tolerance, resume, bad rewards (Ray on the local CPUs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sepo_ray.experiment.tuning import TUNE_CLOCK

pytestmark = pytest.mark.slow

TOY = dict(task="toy", prompts_per_batch=4, group_size=4, denoise_steps=6, kl_steps=2, snis_samples=2)


def toy_config(**overrides):
    from sepo_ray.rllib import SEPOConfig

    kw = {**TOY, **overrides}
    lr = kw.pop("lr", 3e-3)
    runners = kw.pop("num_env_runners", 0)
    return SEPOConfig().sepo(**kw).training(lr=lr).env_runners(num_env_runners=runners).debugging(seed=0)


def weights(algo) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in algo.current_denoiser().state_dict().items()}


def test_default_config_is_the_dna_task():
    from sepo_ray.rllib import SEPOConfig

    cfg = SEPOConfig()
    assert cfg.task == "dna" and cfg.task_spec().length == 200
    assert cfg.batch_sequences == cfg.prompts_per_batch * cfg.group_size


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("clip_eps", 0.0, "clip_eps"),
        ("snis_samples", -1, "snis_samples"),
        ("neighbour_positions", 17, "neighbour_positions"),
        ("score_estimator", "exact", "score_estimator"),
        ("kl_steps", 99, "kl_steps"),
        ("task", "protein", "task"),
    ],
)
def test_bad_config_names_the_field(field, value, match):
    cfg = toy_config(**{field: value})
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def test_unknown_sepo_field_is_rejected():
    from sepo_ray.rllib import SEPOConfig

    with pytest.raises(ValueError, match="unknown SEPO field 'clip_epsilon'"):
        SEPOConfig().sepo(clip_epsilon=0.1)


def mean_toy_reward(algo, n=512) -> float:
    from sepo_ray import diffusion
    from sepo_ray.tasks.toy import fraction_a

    g = torch.Generator().manual_seed(1)
    x = diffusion.sample(algo.current_denoiser(), n, 16, algo.config.denoise_steps, generator=g).x
    return float(fraction_a(["".join("ACGT"[t] for t in row) for row in x.tolist()]).mean())


def test_smoke_loss_finite_params_move_reward_rises(ray_session):
    algo = toy_config(kl_alpha=0.0, lr=5e-3).build_algo()
    try:
        before, reward_before = weights(algo), mean_toy_reward(algo)
        rewards, results = [], []
        for _ in range(10):
            res = algo.train()
            rewards.append(res["sepo"]["reward_mean"])
            results.append(res)
        after, reward_after = weights(algo), mean_toy_reward(algo)
        learner = results[-1]["learners"]["default_policy"]
        assert np.isfinite(learner["total_loss"]) and np.isfinite(learner["sepo_loss"])
        unmoved = [k for k in before if torch.equal(before[k], after[k])]
        assert not unmoved, f"parameters that never moved: {unmoved}"
        # toy reward: fraction of 'A' (about 0.25 for the initial generator), 512 fresh samples each side
        assert reward_after > reward_before + 0.05, (reward_before, reward_after, rewards)
    finally:
        algo.stop()


@pytest.mark.parametrize(
    "variant",
    [
        dict(objective="trajectory"),
        dict(objective="sepo_t", noise_states=3),
        dict(corrector_steps=1),
        dict(snis_samples=0, score_estimator="clean", neighbour_positions=None),
        dict(advantage="ppo"),
    ],
    ids=[
        "trajectory-baseline",
        "sepo-every-noise-level",
        "gradient-flow",
        "clean-noSNIS-allpositions",
        "ppo-advantage",
    ],
)
def test_variants_train(ray_session, variant):
    algo = toy_config(**variant).build_algo()
    try:
        before = weights(algo)
        res = [algo.train() for _ in range(2)]
        learner = res[-1]["learners"]["default_policy"]
        assert np.isfinite(learner["total_loss"]) and np.isfinite(res[-1]["sepo"]["reward_mean"])
        assert any(not torch.equal(v, weights(algo)[k]) for k, v in before.items())
        # the frontier's tuning clock: every sampled sequence is one fine-tuning oracle call
        n = algo.config.batch_sequences
        assert [r[TUNE_CLOCK] for r in res] == [n, 2 * n]
    finally:
        algo.stop()


def test_kl_term_is_reported_and_positive_after_updates(ray_session):
    algo = toy_config(kl_alpha=0.5).build_algo()
    try:
        kls = [algo.train()["sepo"]["kl"] for _ in range(3)]
        assert kls[0] >= 0 and kls[-1] > 0, kls
    finally:
        algo.stop()


def test_checkpoint_round_trip(ray_session, tmp_path):
    from ray.rllib.algorithms.algorithm import Algorithm

    algo = toy_config().build_algo()
    try:
        algo.train()
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        saved = weights(algo)
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        assert restored.iteration == 1
        for k, v in weights(restored).items():
            assert torch.equal(v, saved[k]), k
        restored.train()
        assert restored.iteration == 2
    finally:
        restored.stop()


def test_oracle_actor_killed_mid_run(ray_session):
    import ray

    algo = toy_config(oracle_actors=1, oracle_max_restarts=3).build_algo()
    try:
        algo.train()
        pid_before = ray.get(algo._reward_pool.actors[0].pid.remote())
        ray.kill(algo._reward_pool.actors[0], no_restart=False)  # dies; Ray restarts it
        res = [algo.train() for _ in range(2)]
        assert algo.iteration == 3
        assert all(np.isfinite(r["sepo"]["reward_mean"]) for r in res)
        assert ray.get(algo._reward_pool.actors[0].pid.remote()) != pid_before
    finally:
        algo.stop()


def test_rollout_worker_killed_mid_run(ray_session):
    import ray

    algo = toy_config(num_env_runners=1).build_algo()
    try:
        algo.train()
        actor = algo.env_runner_group._worker_manager._actors[1]
        ray.kill(actor, no_restart=False)  # a crash: Ray restarts the process, RLlib restores its state
        res = [algo.train() for _ in range(2)]
        assert algo.iteration == 3
        assert all(np.isfinite(r["sepo"]["reward_mean"]) for r in res)
    finally:
        algo.stop()


SMALL_RUN = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4"]


def run_main(tmp_path, *extra):
    from sepo_ray.cli.run import main

    return main(["toy", "--output", str(tmp_path), "--eval-samples", "32", *extra])


def test_run_stop_and_resume_keeps_history(ray_session, tmp_path):
    small = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4"]
    assert run_main(tmp_path, "--iterations", "2", *small) == 0
    first = json.loads((tmp_path / "result.json").read_text())
    assert [h["iteration"] for h in first["history"]] == [1, 2]
    assert run_main(tmp_path, "--iterations", "4", "--resume") == 0
    record = json.loads((tmp_path / "result.json").read_text())
    assert [h["iteration"] for h in record["history"]] == [1, 2, 3, 4]
    assert record["history"][:2] == first["history"]
    assert record["settings"]["denoise_steps"] == 4  # the run's own settings were kept
    assert record["sources"]["denoise_steps"] == "--set"
    assert record["final_checkpoint"].endswith("iter_0004")
    assert (tmp_path / "checkpoints" / "iter_0004" / "generator.safetensors").exists()
    for key in ("iteration", "reward_mean", "reward_median", "kl", "clip_frac", "time_s"):
        assert key in record["history"][-1]
    assert "before" in record and "after" in record


@pytest.mark.parametrize(
    "reward,message",
    [
        ("tests.rewards_for_tests:nan_reward", "non-finite"),
        ("tests.rewards_for_tests:wrong_count", "returned 31 values for 32 sequences"),
        ("tests.rewards_for_tests:raising", "raised KeyError"),
    ],
)
def test_bad_reward_gives_clear_error_and_keeps_checkpoint(ray_session, tmp_path, capsys, reward, message):
    rc = run_main(tmp_path, "--iterations", "2", "--reward", reward, "--no-eval")
    err = capsys.readouterr().err
    assert rc == 3
    assert reward in err and message in err, err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing to resume: no run folder left
    # so the corrected command runs there at once (a failed start is not "a run already")
    assert run_main(tmp_path, "--iterations", "1", "--no-eval", *SMALL_RUN) == 0


def test_reward_failing_later_keeps_last_checkpoint(ray_session, tmp_path, capsys):
    from safetensors.torch import load_file

    reward = "tests.rewards_for_tests:nan_after_first_call"
    rc = run_main(tmp_path, "--iterations", "3", "--reward", reward, "--no-eval")
    assert rc == 3 and reward in capsys.readouterr().err
    record = json.loads((tmp_path / "result.json").read_text())
    assert [h["iteration"] for h in record["history"]] == [1]
    assert record["final_checkpoint"].endswith("iter_0001")
    assert not record["final_checkpoint"].startswith("/")  # relative to the run directory: relocatable
    assert load_file(tmp_path / record["final_checkpoint"] / "generator.safetensors")  # intact and loadable


def test_user_reward_rises(ray_session, tmp_path):
    from sepo_ray.cli.run import main

    rc = main(
        ["toy", "--output", str(tmp_path), "--iterations", "8", "--eval-samples", "256"]
        + ["--reward", "sepo_ray.tasks.dna.rewards:gc_content", "--set", "kl_alpha=0.0", "--set", "lr=3e-3"]
    )
    assert rc == 0
    record = json.loads((tmp_path / "result.json").read_text())
    assert len(record["history"]) == 8
    # 256 fresh samples before and after (same seed): the user's reward, not the task's default, went up
    assert record["after"]["user_reward_mean"] > record["before"]["user_reward_mean"] + 0.02, record


def test_tune_reserves_gpu_oracle_actors():
    from sepo_ray.rllib import SEPO

    bundles = SEPO.default_resource_request(toy_config(oracle_actors=2, oracle_num_gpus=0.5)).bundles
    assert bundles.count({"GPU": 0.5}) == 2
    assert SEPO.default_resource_request(toy_config(oracle_actors=1)).bundles == [{"CPU": 1.0}]
