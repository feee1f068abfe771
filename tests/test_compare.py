"""The Table-2 comparison: oracle budget, best-of-N, outputs, and the per-row cache (tiny generators, few samples)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sepo_ray import compare, evaluation
from sepo_ray.models import save_model
from sepo_ray.tasks.dna.models import DNAConvDenoiser

ROWS = ["pretrained", "best_of_n", "sepo_grpo", "trajectory_grpo", "real_hepg2_test", "real_nonhepg2_test"]


def _fake_run(root, name, seed, iterations=1, batch=2, group=2):
    """A finished `sepo_ray.run` directory: result.json (checkpoints relative to the run directory, as `run`
    writes them) and a (tiny, random) fine-tuned generator."""
    torch.manual_seed(seed)
    entry = f"checkpoints/iter_{iterations:04d}"
    ckpt = root / "runs" / name / entry
    ckpt.mkdir(parents=True, exist_ok=True)
    save_model(DNAConvDenoiser(hidden_dim=8, num_cnn_stacks=1).eval(), ckpt / "generator.safetensors")
    record = {
        "config": {"prompts_per_batch": batch, "group_size": group, "denoise_steps": 2},
        "history": [{"iteration": i + 1, "kl": 0.1 * (i + 1)} for i in range(iterations)],
        "final_checkpoint": entry,
        "checkpoints": [entry],
        "seed": 0,
        "overrides": {"reward": "dna_ft", **compare.parse_overrides(compare.VARIANTS[name])},
    }
    (root / "runs" / name / "result.json").write_text(json.dumps(record))
    return record


def _args(out):
    return ["dna", "--output", str(out), "--skip-train", "--variants", "sepo_grpo,trajectory_grpo",
            "--num-samples", "6", "--seeds", "0,1", "--elbo-steps", "1"]  # fmt: skip


def test_oracle_budget_counts_every_sequence_scored():
    record = {"config": {"prompts_per_batch": 4, "group_size": 8}, "history": [{}] * 16}
    assert compare.oracle_budget(record) == 512


def test_row_cache_round_trip_and_fingerprint_mismatch(tmp_path):
    import pandas as pd

    fp = compare.row_fingerprint("x", {"generator": "abc"}, {"seeds": [0], "num_samples": 4})
    samples = pd.DataFrame({"row": ["x"], "seed": [0], "sequence": ["ACGT"], "pred_activity": [1.5]})
    metrics = {"pred_activity_median": {"mean": 1.5, "std": 0.0}}
    assert compare.load_cached_row(tmp_path, "x", fp) is None
    compare.save_cached_row(tmp_path, "x", fp, metrics, samples)
    got_metrics, got_samples = compare.load_cached_row(tmp_path, "x", fp)
    assert got_metrics == metrics and got_samples.equals(samples)
    other = compare.row_fingerprint("x", {"generator": "abd"}, {"seeds": [0], "num_samples": 4})
    assert compare.load_cached_row(tmp_path, "x", other) is None
    (tmp_path / "x.parquet").unlink()  # a half-written row is not a row
    assert compare.load_cached_row(tmp_path, "x", fp) is None


def test_compare_writes_every_row_and_reevaluates_only_what_changed(tmp_path, monkeypatch, capsys):
    _fake_run(tmp_path, "sepo_grpo", seed=1)
    _fake_run(tmp_path, "trajectory_grpo", seed=2)
    assert compare.main(_args(tmp_path)) == 0

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics) == ROWS
    table = (tmp_path / "table.md").read_text()
    assert "Oracle budget: 4 fine-tuning-oracle calls per method" in table
    assert all(f"| {row} |" in table for row in ROWS)
    info = json.loads((tmp_path / "compare.json").read_text())
    assert info["budgets"] == {"sepo_grpo": 4, "trajectory_grpo": 4}
    assert info["final_kl"] == {"sepo_grpo": pytest.approx(0.1), "trajectory_grpo": pytest.approx(0.1)}
    assert (tmp_path / "pred_activity.png").stat().st_size > 0
    import pandas as pd

    samples = pd.read_parquet(tmp_path / "samples.parquet")
    counts = samples.groupby("row").size().to_dict()
    # best-of-N keeps one of each group of 2 among the 4 candidates the budget buys: 2 per seed
    assert counts["best_of_n"] == 2 * 2 and counts["pretrained"] == 6 * 2
    assert {p.stem for p in (tmp_path / "rows").glob("*.json")} == set(ROWS)

    # a rerun with nothing changed evaluates nothing
    def refuse(task, rows, **kwargs):
        raise AssertionError(f"re-evaluated {list(rows)}")

    monkeypatch.setattr(evaluation, "evaluate_rows", refuse)
    capsys.readouterr()
    assert compare.main(_args(tmp_path)) == 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert capsys.readouterr().out.count("reusing") == len(ROWS)

    # a changed generator re-evaluates its own row only
    monkeypatch.undo()
    seen = []
    real = evaluation.evaluate_rows

    def spy(task, rows, **kwargs):
        seen.extend(rows)
        return real(task, rows, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_rows", spy)
    _fake_run(tmp_path, "trajectory_grpo", seed=3)
    assert compare.main(_args(tmp_path)) == 0
    assert seen == ["trajectory_grpo"]
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["sepo_grpo"] == metrics["sepo_grpo"]
    assert again["trajectory_grpo"] != metrics["trajectory_grpo"]


def test_finished_runs_are_reused_only_when_trained_as_asked(tmp_path):
    record = _fake_run(tmp_path, "trajectory_grpo", seed=1)
    # finished with the same seed and overrides: reused, nothing is trained
    assert compare.train_variants("dna", tmp_path, compare.variant_plan(["trajectory_grpo"]), 1, 0, []) == {
        "trajectory_grpo": record
    }
    with pytest.raises(ValueError, match=r"trained with seed 0 .* asks for seed 1"):
        compare.train_variants("dna", tmp_path, compare.variant_plan(["trajectory_grpo"]), 1, 1, [])
    with pytest.raises(ValueError, match="'lr': 0.001"):
        compare.train_variants("dna", tmp_path, compare.variant_plan(["trajectory_grpo"]), 1, 0, ["lr=1e-3"])


def test_variants_train_and_best_of_n_selects_on_the_benchmark_reward(tmp_path, monkeypatch):
    import sepo_ray.run

    asked = {}

    def fake_train(task, run_dir, iterations, seed, overrides, **kw):
        asked[run_dir.name] = overrides
        return _fake_run(tmp_path, run_dir.name, seed)

    monkeypatch.setattr(sepo_ray.run, "train", fake_train)
    runs = compare.variant_plan(["sepo_grpo", "trajectory_grpo"])
    compare.train_variants("dna", tmp_path, runs, 1, 0, [])
    # the DNA run defaults name a guarded reward; a comparison spends every call on the fine-tuning oracle
    assert {name: o["reward"] for name, o in asked.items()} == {
        "sepo_grpo": "dna_ft",
        "trajectory_grpo": "dna_ft",
    }
    asked.clear()
    with pytest.raises(ValueError, match="trained with"):  # a run on another reward is not reused
        compare.train_variants("dna", tmp_path, runs, 1, 0, ["reward=dna_eval"])
    # a run recorded before the run defaults named a reward trained on dna_ft: reused as it is
    record = json.loads((tmp_path / "runs" / "sepo_grpo" / "result.json").read_text())
    record["overrides"].pop("reward")
    (tmp_path / "runs" / "sepo_grpo" / "result.json").write_text(json.dumps(record))
    assert compare.train_variants("dna", tmp_path, runs, 1, 0, [])["sepo_grpo"] == record and not asked
    # and best-of-N selects on the reward the runs trained on
    from sepo_ray.tasks import get_task

    records = compare.train_variants("dna", tmp_path, runs, 1, 0, [])
    rows = compare.row_plan(get_task("dna"), tmp_path, records, [0], 4, 2, 1)
    assert rows["best_of_n"][0]["reward"] == "dna_ft"


def test_unknown_variant_and_missing_runs_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main(["dna", "--output", str(tmp_path), "--skip-train", "--variants", "sepo_fast"])
    assert "unknown ['sepo_fast']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["dna", "--output", str(tmp_path), "--skip-train", "--variants", "sepo_grpo"])
    assert "no finished runs" in capsys.readouterr().err


def test_a_moved_comparison_reuses_every_row_and_writes_in_its_new_place(tmp_path, monkeypatch, capsys):
    import pandas as pd

    before = tmp_path / "before"
    _fake_run(before, "sepo_grpo", seed=1)
    _fake_run(before, "trajectory_grpo", seed=2)
    assert compare.main(_args(before)) == 0
    after = tmp_path / "elsewhere" / "after"
    after.parent.mkdir()
    shutil.move(str(before), str(after))
    written = {p: p.stat().st_mtime_ns for p in after.glob("*") if p.is_file()}
    for p in written:
        p.touch()
        written[p] = p.stat().st_mtime_ns

    def refuse(task, rows, **kwargs):
        raise AssertionError(f"re-evaluated {list(rows)}")

    monkeypatch.setattr(evaluation, "evaluate_rows", refuse)
    capsys.readouterr()
    assert compare.main(_args(after)) == 0
    assert capsys.readouterr().out.count("reusing") == len(ROWS)
    assert not before.exists()
    assert list(json.loads((after / "metrics.json").read_text())) == ROWS
    for name in ("metrics.json", "table.md", "compare.json", "samples.parquet", "pred_activity.png"):
        assert (after / name).stat().st_mtime_ns > written.get(after / name, 0), f"{name} was not rewritten"

    # nothing compare writes (nor the run records it reads) names an absolute path: neither the old nor the
    # new place, nor the package's own artifacts
    roots = [str(tmp_path), str(Path(compare.__file__).resolve().parents[1])]
    for path in after.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors":
            data = path.read_bytes()
            assert not any(root.encode() in data for root in roots), f"{path} holds an absolute path"
    for path in after.rglob("*.parquet"):
        frame = pd.read_parquet(path)
        for column in frame.columns:
            if pd.api.types.is_string_dtype(frame[column]):
                assert not frame[column].astype(str).str.startswith("/").any(), (
                    f"{path}:{column} holds a path"
                )
