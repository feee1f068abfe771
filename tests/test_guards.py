"""Guards that stop a run or an evaluation early with one clear line: reward timeouts (in-process and through
the actor pool), reward specs checked without building anything, generators with non-finite weights,
reference sets smaller than --num-samples, and an --output that is a file."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch

from envs.sequence_bandit import SequenceBanditEnv
from sepo_ray import evaluation
from sepo_ray.cli import evaluate
from sepo_ray.cli.compare import compare_main
from sepo_ray.models import ConvDenoiser, save_model
from sepo_ray.oracles import RewardError, RewardPool, check_reward_spec, oracle_specs, resolve_reward
from sepo_ray.tasks import get_task
from sepo_ray.tasks.dna.models import DNAConvDenoiser
from tests.test_experiment import fake_runs, toy_compare

SLEEPY = "tests.rewards_for_tests:sleepy"  # sleeps 20 s
ONES = "tests.rewards_for_tests:ones"
NO_ANSWER = rf"reward '{SLEEPY}' gave no answer in 0\.5 s.*reward_timeout_s"


def _last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# ---------------------------------------------------------------------------------------- reward timeout
def test_in_process_reward_times_out_and_a_normal_one_does_not():
    reward = resolve_reward(SLEEPY, timeout_s=0.5)
    t0 = time.perf_counter()
    with pytest.raises(RewardError, match=NO_ANSWER):
        reward(["ACGT"] * 3)
    assert time.perf_counter() - t0 < 3.0
    np.testing.assert_array_equal(resolve_reward(ONES, timeout_s=0.5)(["A", "C"]), [1.0, 1.0])
    np.testing.assert_array_equal(resolve_reward(ONES)(["A"]), [1.0])  # no timeout: called in this thread
    with pytest.raises(RewardError, match=r"raised KeyError: 'no such table'"):  # errors still named
        resolve_reward("tests.rewards_for_tests:raising", timeout_s=0.5)(["A"])
    with pytest.raises(RewardError, match=r"returned 1 values for 2 sequences"):
        resolve_reward("tests.rewards_for_tests:wrong_count", timeout_s=0.5)(["A", "C"])
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match="reward_timeout_s must be > 0"):
            resolve_reward(ONES, timeout_s=bad)


def _env_step(config: dict):
    env = SequenceBanditEnv({"task": "toy", "num_envs": 2, **config})
    env.reset(seed=0)
    actions = np.zeros((2, env.length), np.int64)
    _, rewards, terminated, _, infos = env.step(actions)
    assert terminated.all()
    return rewards, infos


def test_env_passes_the_timeout_to_the_in_process_reward():
    rewards, infos = _env_step({"reward": SLEEPY, "reward_timeout_s": 0.5})
    assert np.isnan(rewards).all()
    assert "gave no answer in 0.5 s" in infos["reward_error"][0]
    rewards, infos = _env_step({"reward": ONES, "reward_timeout_s": 0.5})
    np.testing.assert_array_equal(rewards, [1.0, 1.0])
    assert "reward_error" not in infos


def _ready(pool: RewardPool) -> RewardPool:
    """Wait for the actors to start (imports take seconds on a busy machine: not the reward's time)."""
    import ray

    ray.get([a.pid.remote() for a in pool.actors], timeout=120)
    return pool


def test_pool_reward_times_out_and_the_env_passes_the_setting_on(ray_session):
    pool = _ready(RewardPool(SLEEPY, num_actors=1, num_cpus=0, timeout_s=0.5))
    fine = _ready(RewardPool(ONES, num_actors=2, num_cpus=0))
    try:
        assert pool.address()["timeout_s"] == 0.5 and fine.address()["timeout_s"] == 600.0
        assert RewardPool.connect(**pool.address()).timeout_s == 0.5
        t0 = time.perf_counter()
        with pytest.raises(RewardError, match=NO_ANSWER):
            pool.score(["ACGT"] * 2)
        assert time.perf_counter() - t0 < 5.0
        # the env's setting reaches the rollout worker's connection (here: shorter than the pool's default)
        slow_address = {**pool.address(), "timeout_s": 600.0}
        rewards, infos = _env_step({"reward_pool": slow_address, "reward_timeout_s": 0.5})
        assert np.isnan(rewards).all() and "gave no answer in 0.5 s" in infos["reward_error"][0]
        np.testing.assert_array_equal(fine.score(["A", "C", "G"]), [1.0, 1.0, 1.0])
        rewards, infos = _env_step({"reward_pool": fine.address(), "reward_timeout_s": 0.5})
        np.testing.assert_array_equal(rewards, [1.0, 1.0])
        with pytest.raises(ValueError, match="reward_timeout_s must be > 0"):
            RewardPool(ONES, num_cpus=0, timeout_s=0)
    finally:
        pool.kill()
        fine.kill()


def test_the_before_and_after_evaluation_obeys_the_reward_timeout(ray_session, tmp_path, capsys):
    """A reward that never answers stops the default run's before/after evaluation too, not only training."""
    from sepo_ray.cli.run import main

    t0 = time.monotonic()
    rc = main(["toy", "--output", str(tmp_path / "r"), "--reward", SLEEPY, "--set", "reward_timeout_s=0.5",
               "--set", "oracle_actors=0", "--eval-samples", "8"])  # fmt: skip
    err = capsys.readouterr().err
    assert (
        rc == 3 and time.monotonic() - t0 < 20
    )  # the reward sleeps 20 s: the timeout, not the reward, ended it
    assert re.search(NO_ANSWER, err), err
    assert not (tmp_path / "r").exists()  # nothing to resume: no run folder left


# ------------------------------------------------------------------------------------ reward spec check
def test_check_reward_spec_imports_but_builds_nothing(tmp_path, monkeypatch):
    check_reward_spec(ONES)
    check_reward_spec("tests.rewards_for_tests:Exploding")  # a class is not instantiated
    for name in oracle_specs():
        check_reward_spec(name)
    cases = {
        "nosuch:f": "reward 'nosuch:f': cannot import module 'nosuch' (No module named 'nosuch')",
        "tests.rewards_for_tests:nothere": (
            "reward 'tests.rewards_for_tests:nothere': module 'tests.rewards_for_tests' has no attribute 'nothere'"
        ),
        "tests.rewards_for_tests:not_callable": (
            "reward 'tests.rewards_for_tests:not_callable': 'not_callable' is a int, not a callable"
        ),
        "dna_typo": (
            f"reward 'dna_typo' is not a registered oracle name; use one of {sorted(oracle_specs())} "
            "or a 'module:function' spec"
        ),
        "": "reward: expected a non-empty string spec, got ''",
    }
    (tmp_path / "broken_reward_module.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases["broken_reward_module:f"] = (
        "reward 'broken_reward_module:f': importing module 'broken_reward_module' raised "
        "ZeroDivisionError: division by zero"
    )
    for spec, message in cases.items():
        with pytest.raises(ValueError) as info:
            check_reward_spec(spec)
        assert str(info.value) == message


# ----------------------------------------------------------------------------------- non-finite weights
def _nan_generator(path):
    torch.manual_seed(0)
    model = DNAConvDenoiser(hidden_dim=8, num_cnn_stacks=1).eval()
    with torch.no_grad():
        model.convs[0].weight.view(-1)[:12] = float("nan")
        model.convs[1].weight.view(-1)[:3] = float("inf")
    return save_model(model, path)


def test_a_generator_with_non_finite_weights_is_never_scored(tmp_path, monkeypatch, capsys):
    path = _nan_generator(tmp_path / "bad" / "generator.safetensors")
    message = f"generator {path} has non-finite weights (convs.0.weight: 12 NaN/inf); it was not evaluated"
    task = get_task("dna")
    for source in (path, path.parent, str(path)):
        with pytest.raises(ValueError) as info:
            evaluation.load_generator(task, source)
        assert str(info.value) == message
    assert evaluation.nonfinite_weights(DNAConvDenoiser(hidden_dim=8, num_cnn_stacks=1)) is None

    def refuse(*args, **kwargs):
        raise AssertionError("evaluated")

    monkeypatch.setattr(evaluate, "evaluate_rows", refuse)
    out = tmp_path / "ev"
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["dna", "--model", str(path), "--output", str(out), "--num-samples", "2"])
    assert exit_info.value.code == 2
    assert _last_error_line(capsys).endswith(f"error: --model {path}: {message}")
    assert not out.exists()


def test_an_experiment_refuses_a_run_with_non_finite_weights_before_evaluating_anything(
    tmp_path, monkeypatch
):
    from sepo_ray.experiment import run_experiment

    exp = toy_compare(tmp_path)
    fake_runs(exp)
    torch.manual_seed(0)
    model = ConvDenoiser(hidden_dim=8, num_cnn_stacks=1, num_tokens=4).eval()
    with torch.no_grad():
        model.convs[0].weight.view(-1)[:12] = float("nan")
    bad = save_model(
        model,
        tmp_path / "runs" / "trajectory" / "seed1" / "checkpoints" / "iter_0004" / "generator.safetensors",
    )

    def refuse(task, rows, **kwargs):
        raise AssertionError(f"evaluated {list(rows)}")

    monkeypatch.setattr(evaluation, "evaluate_rows", refuse)
    with pytest.raises(ValueError) as info:
        run_experiment(exp)
    assert str(info.value) == (
        f"trajectory at iteration 4, seed 1: generator {bad} has non-finite weights (convs.0.weight: 12 NaN/inf); "
        "nothing was evaluated"
    )


# ----------------------------------------------------------------------- sample count and output checks
def test_num_samples_above_a_reference_set_is_refused_before_sampling(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("sampled or trained")

    monkeypatch.setattr(evaluate, "evaluate_rows", refuse)
    monkeypatch.setattr(evaluation, "evaluate_rows", refuse)
    monkeypatch.setattr("sepo_ray.training.train", refuse)
    with pytest.raises(SystemExit) as info:
        evaluate.main(["dna", "--num-samples", "959", "--output", str(tmp_path / "ev")])
    assert info.value.code == 2
    line = _last_error_line(capsys)
    assert line.endswith(
        "error: --num-samples 959: real_hepg2_test has only 958 sequences; use --no-references or fewer samples"
    )
    # compare: before any training (15 design batches of 64 = 960 sequences per row)
    assert compare_main(["dna", "--output", str(tmp_path / "cmp"), "--design-batches", "15"]) == 2
    assert _last_error_line(capsys).endswith(
        "error: 960 sequences per row: real_hepg2_test has only 958 sequences; use fewer (--design-batches)"
    )
    assert not (tmp_path / "ev").exists() and not (tmp_path / "cmp").exists()


def test_reference_probe_is_reused_for_its_seed():
    calls = []

    def draw(seed, n):
        calls.append(seed)
        return [f"s{seed}"] * n

    probed = evaluation.probe_references({"ref": draw}, 3, 2)
    row = evaluation.reference_row(draw, 2, (3, probed["ref"]))
    assert row(3) == ["s3", "s3"] and row(4) == ["s4", "s4"] and calls == [3, 4]


def test_an_output_that_is_a_file_is_refused_up_front(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("did work")

    monkeypatch.setattr(evaluate, "evaluate_rows", refuse)
    monkeypatch.setattr("sepo_ray.training.train", refuse)
    monkeypatch.setattr(evaluation, "probe_references", refuse)
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(SystemExit) as info:
        evaluate.main(["dna", "--output", str(path)])
    assert info.value.code == 2
    assert _last_error_line(capsys).endswith(f"error: --output {path} is a file, not a directory")
    for command in ("compare", "frontier"):
        from sepo_ray.cli.compare import main

        assert main(["dna", "--output", str(path)], command) == 2
        assert _last_error_line(capsys).endswith(f"error: --output {path} is a file, not a directory")
    assert path.read_text() == "x"
