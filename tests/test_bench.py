"""`sepo-ray bench`: the cheap entries at tiny sizes (--quick), exact forward counts, the CLI."""

import dataclasses
import json
import math

import pytest
import torch

from sepo_ray import benchmarks as bench
from sepo_ray.cli.bench import run_benchmarks

CHEAP = ("sampler_overhead", "learner_forwards_per_update", "gpu_throughput")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    results = run_benchmarks(["--quick", "--only", ",".join(CHEAP), "--output", str(path)])
    return results, path


def positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def expected_counts(s: bench.UpdateSettings) -> dict:
    """Forward counts written out by hand (N = B G, K positions, m-1 other tokens, M SNIS samples)."""
    n, k, j, mm, e = s.batch, s.num_positions, s.num_tokens - 1, s.snis_samples, s.num_epochs
    length, st, t, g = s.length, s.kl_steps, s.denoise_steps, s.group_size
    return {
        "ours_rollout_sampler": (t, n * t, 0),
        "ours_rollout_old_policy": (2, n * k + n * k * j * mm, 0),
        # per epoch: conditional scores (grad) + SNIS (masked forwards) + KL on theta (grad) and the reference
        "ours_learner": (4 * e, e * (n * k + n * k * j * mm + 2 * n * st), e * (n * k + n * st)),
        # per epoch and group: old score + old SNIS (masked + clean) + new score (grad) + new SNIS
        "published_learner": (6 * e * g, e * (2 * n + 4 * n * length * j * mm), e * n),
    }


def test_registry_holds_every_entry():
    assert list(bench.BENCHMARKS) == [
        "fidelity",
        "sampler_overhead",
        "learner_forwards_per_update",
        "ray_overhead",
        "rollout_scaling",
        "gpu_throughput",
        "iteration",
        "async",
    ]


@pytest.mark.slow
def test_iteration_split_adds_up_and_names_where_the_time_goes(ray_session):
    import argparse

    from sepo_ray.benchmarks.iteration import iteration_split

    out = iteration_split(argparse.Namespace(quick=True, settings={"trajectory_steps": 2}))
    parts = ("sampling_s", "reward_s", "learner_forward_s", "learner_backward_s", "learner_step_s",
             "learner_other_s", "broadcast_s", "evaluation_s", "other_s")  # fmt: skip
    (row,) = out["iterations"]
    assert sum(row[k] for k in parts) == pytest.approx(row["iteration_s"], abs=2e-3)
    assert all(row[k] >= 0 for k in parts if k != "other_s") and row["learner_forward_s"] > 0
    assert row["iteration_over_sampling"] == pytest.approx(
        row["iteration_s"] / (row["sampling_s"] + row["reward_s"]), rel=1e-2
    )
    assert out["settings"]["objective"] == "trajectory" and out["settings"]["trajectory_steps"] == 2


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid.*sampler_overhead"):
        run_benchmarks(["--only", "sampler_overhed"])


def test_output_file_holds_the_printed_json_and_the_machine(quick):
    results, path = quick
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    assert set(results) == set(CHEAP)
    for entry in results.values():
        assert {"cpu", "cores", "gpu"} <= set(entry["machine"])


def test_sampler_overhead_is_a_sane_ratio(quick):
    entry = quick[0]["sampler_overhead"]
    assert entry["ratio"] and all(positive_finite(r) for r in entry["ratio"].values())
    for row in entry["rows"].values():
        s = row["settings"]
        assert row["sampler_forward_calls"] == s["steps"]
        assert row["sampler_forward_rows"] == s["steps"] * s["batch"]


@pytest.mark.parametrize("scale", ["full", "toy"])
def test_forward_counts_equal_the_formula_exactly(quick, scale):
    entry = quick[0]["learner_forwards_per_update"]
    s = bench.UpdateSettings(**entry[f"settings_{scale}"])
    counts = entry[f"counts_{scale}"]
    for phase, (calls, rows, grad_rows) in expected_counts(s).items():
        got = counts[phase]
        assert (got["calls"], got["rows"], got["grad_rows"]) == (calls, rows, grad_rows), phase
        assert got["matches_formula"]
    formulas = bench.count_formulas(s)
    assert counts["forwards_ratio_published_over_ours_learner"] == round(
        formulas["published_learner"]["rows"] / formulas["ours_learner"]["rows"], 2
    )
    assert counts["forwards_ratio_published_over_ours_learner"] > 1


def test_learner_time_ratio_and_fidelity_are_reported(quick):
    entry = quick[0]["learner_forwards_per_update"]
    ratio = entry["learner_time_ratio"]
    assert positive_finite(ratio["published_over_ours"])
    assert positive_finite(ratio["published_over_ours_incl_old_policy"])
    fid = entry["gradient_fidelity"]
    for regime in ("onpolicy", "offpolicy", "expected"):
        for key in ("ours", "published"):
            assert -1.0 <= fid[regime][key]["mean"] <= 1.0
        assert isinstance(fid[regime]["verdict"], str)


def test_gpu_entry_is_skipped_without_a_gpu(quick):
    entry = quick[0]["gpu_throughput"]
    if torch.cuda.is_available():
        assert all(positive_finite(v) for v in entry["best_sequences_per_s"].values())
    else:
        assert entry["skipped"] == "no GPU"


def test_gpu_throughput_code_path_runs_on_cpu():
    res = bench.gpu_throughput_run(
        "cpu", hidden=8, stacks=1, length=12, steps=2, batches=(2, 4), modes=("fp32", "bf16"), repeats=1
    )
    for mode in ("fp32", "bf16"):
        row = res["modes"][mode]
        assert row["best_batch"] in (2, 4)
        assert positive_finite(row["best_sequences_per_s"])


def test_counting_wrapper_separates_rows_with_gradient():
    tally = bench.ForwardTally()
    model = bench.CountingDenoiser(bench.ShapeOnlyDenoiser(4), tally)
    z = torch.zeros(3, 5, dtype=torch.long)
    model(z).sum().backward()
    with torch.no_grad():
        model(torch.zeros(7, 5, dtype=torch.long))
    assert tally.snapshot() == {"calls": 2, "rows": 10, "grad_rows": 3}


def test_update_settings_are_the_schema_defaults_and_the_default_task():
    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.settings import SETTINGS

    s, config = bench.UpdateSettings(), SEPOConfig()
    shared = [f.name for f in dataclasses.fields(s) if f.name in SETTINGS]
    assert len(shared) == 9
    assert {k: getattr(s, k) for k in shared} == {k: getattr(config, k) for k in shared}
    task = config.task_spec()
    assert (s.length, s.num_tokens) == (task.length, task.num_tokens)
    assert s.spec() == config.update_spec()


def test_ours_update_is_the_engine_update(monkeypatch):
    """The bench's rollout and learner go through sepo_ray.sepo.update, the path the RLlib module and learner use."""
    from sepo_ray.sepo import update

    calls = []
    for name in ("rollout", "old_policy", "update_loss"):
        real = getattr(update, name)
        monkeypatch.setattr(
            update, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k)
        )
    s = bench.UpdateSettings(length=6, prompts_per_batch=2, group_size=2, num_epochs=2, denoise_steps=3)
    bench.learner_comparison(bench.ShapeOnlyDenoiser(s.num_tokens), s, repeats=1, timed=False)
    assert calls.count("rollout") == 1 and calls.count("update_loss") == s.num_epochs
    assert calls.count("old_policy") >= 2  # inside the rollout, then alone for its own count
