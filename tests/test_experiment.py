"""Experiments (``compare`` = one budget, ``frontier`` = several): rows, the cost each spends, equal tuning, the
report files, the row cache, runs reused only when trained as asked, and prompts paired across rows."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from sepo_ray import evaluation
from sepo_ray.cli.compare import compare_main, frontier_main
from sepo_ray.experiment import Tuning, best_row, prepare, run_experiment
from sepo_ray.experiment.runs import run_dir
from sepo_ray.methods import METHODS, get_method
from sepo_ray.models import ConvDenoiser, save_model

SMALL = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4"]


def fake_runs(exp, seed_offset: int = 0, model=None) -> None:
    """A finished run per (fine-tuning entry, seed), as the training loop writes it: the resolved settings, a
    history and a (tiny, random) generator at every checkpoint the experiment needs (``model()``: another
    network than a 4-token CNN)."""
    for entry in exp.trained:
        for seed in exp.seeds:
            folder = run_dir(exp.output, entry.name, seed)
            settings = exp.run_settings(entry, seed)
            last = exp.needed[entry.name][-1]
            checkpoints = []
            for it in exp.needed[entry.name]:
                torch.manual_seed(1000 * seed + it + seed_offset)
                entry_dir = f"checkpoints/iter_{it:04d}"
                net = model() if model else ConvDenoiser(hidden_dim=8, num_cnn_stacks=1, num_tokens=4)
                save_model(net, folder / entry_dir / "generator.safetensors")
                checkpoints.append(entry_dir)
            record = {"task": exp.task.name, "settings": dict(settings.values), "sources": dict(settings.sources),
                      "history": [{"iteration": i + 1, "kl": 0.1 * (i + 1), "time_s": 3.0 * (seed + 1)}
                                  for i in range(last)],
                      "checkpoints": checkpoints, "final_checkpoint": checkpoints[-1]}  # fmt: skip
            (folder / "result.json").write_text(json.dumps(record))


def toy_compare(out: Path, methods=("pretrained", "best_of_n", "sepo", "trajectory")):
    return prepare(
        "toy",
        out,
        list(methods),
        [32],
        [0, 1],
        design_size=8,
        design_batches=2,
        sets=SMALL[1::2],
        elbo_steps=1,
    )


def test_methods_are_declared_once_with_their_cost_model():
    assert {"pretrained", "best_of_n", "svdd", "sepo", "sepo_t", "actor_critic", "trajectory",
            "finetuned_best_of_n"} <= set(METHODS)  # fmt: skip
    assert get_method("actor_critic").settings == {"objective": "sepo_t", "advantage": "critic"}
    assert get_method("sepo").cost(512, 64) == {"train": 512, "per_design": 0}
    assert get_method("best_of_n").cost(512, 64) == {"train": 0, "per_design": 8}
    assert get_method("finetuned_best_of_n").cost(512, 64) == {"train": 256, "per_design": 4}
    assert get_method("pretrained").cost(512, 64) == {"train": 0, "per_design": 0}
    assert set(get_method("trajectory").tunable) == {"kl_alpha", "lr"} and not get_method("best_of_n").tunable
    with pytest.raises(ValueError, match="unknown method 'sepo_fast'; valid: pretrained, "):
        get_method("sepo_fast")


def test_compare_writes_every_row_and_reevaluates_only_what_changed(tmp_path, monkeypatch, capsys):
    exp = toy_compare(tmp_path)
    fake_runs(exp)
    report = run_experiment(exp)
    names = [r["name"] for r in report["rows"]]
    assert names == ["pretrained", "sepo", "trajectory", "best_of_n"]  # one budget: rows named by entry alone
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["best_of_n"]["calls"] == {"fine_tuning": 0, "selection": 32} and rows["best_of_n"][
        "config"
    ] == {"n": 4}
    assert rows["sepo"]["calls"] == {"fine_tuning": 32, "selection": 0} and rows["sepo"]["iterations"] == 4
    assert rows["sepo"]["config"]["objective"] == "sepo" and rows["sepo"]["kl"] == pytest.approx(0.3)
    assert rows["best_of_n"]["cost"] == {"train": 0, "per_design": 4}
    # each fine-tuned row: its runs' training seconds to the budget (4 iterations of 3 s, 6 s), none for the others
    assert (
        rows["sepo"]["train_seconds"] == {"0": 12.0, "1": 24.0} and "train_seconds" not in rows["best_of_n"]
    )
    for row in rows.values():
        assert row["seeds"] == [0, 1] and row["sequences_per_seed"] == 16
        for stats in row["metrics"].values():
            assert stats["se"] == pytest.approx(stats["std"] / math.sqrt(2))
    for name in ("comparison.json", "table.md", "metrics.json", "samples.parquet", "reward.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert list(json.loads((tmp_path / "metrics.json").read_text())) == names
    import pandas as pd

    samples = pd.read_parquet(tmp_path / "samples.parquet")
    assert samples.groupby("row").size().to_dict() == dict.fromkeys(names, 32)
    table = (tmp_path / "table.md").read_text()
    assert "At 32 calls the best mean reward (mean)" in table
    assert "| sepo | 32 | 0.3 | " in table and "| best_of_n | 32 | — | " in table  # minutes per seed

    def refuse(*args, **kwargs):
        raise AssertionError("evaluated or trained again")

    monkeypatch.setattr(evaluation, "evaluate_rows", refuse)  # a rerun with nothing changed evaluates nothing
    capsys.readouterr()
    assert run_experiment(toy_compare(tmp_path))["rows"] == report["rows"]
    assert capsys.readouterr().out.count(": reusing ") == len(names)

    monkeypatch.undo()  # a changed generator re-evaluates its own rows only
    seen, real = [], evaluation.evaluate_rows

    def spy(task, rows, **kwargs):
        seen.extend(rows)
        return real(task, rows, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_rows", spy)
    exp = toy_compare(tmp_path)
    for seed in (0, 1):
        shutil.rmtree(run_dir(tmp_path, "trajectory", seed))
    fake_runs(toy_compare(tmp_path, ("trajectory",)), seed_offset=7)
    assert [r["name"] for r in run_experiment(exp)["rows"]] == names and seen == ["trajectory_32"]


def test_a_moved_experiment_reuses_every_row_and_writes_no_absolute_path(tmp_path, monkeypatch, capsys):
    import pandas as pd

    before = tmp_path / "before"
    exp = toy_compare(before)
    fake_runs(exp)
    run_experiment(exp)
    after = tmp_path / "elsewhere" / "after"
    after.parent.mkdir()
    shutil.move(str(before), str(after))
    monkeypatch.setattr(evaluation, "evaluate_rows", lambda *a, **k: pytest.fail("re-evaluated"))
    capsys.readouterr()
    run_experiment(toy_compare(after))
    assert capsys.readouterr().out.count(": reusing ") == 4
    roots = [str(tmp_path), str(Path(evaluation.__file__).resolve().parents[1])]
    for path in after.rglob("*"):
        if path.is_file() and path.suffix not in (".safetensors", ".parquet"):
            assert not any(root.encode() in path.read_bytes() for root in roots), (
                f"{path} holds an absolute path"
            )
    for path in after.rglob("*.parquet"):
        frame = pd.read_parquet(path)
        for column in frame.columns:
            if pd.api.types.is_string_dtype(frame[column]):
                assert not frame[column].astype(str).str.startswith("/").any(), (
                    f"{path}:{column} holds a path"
                )


def test_finished_runs_are_reused_only_when_trained_as_asked(tmp_path, capsys):
    exp = toy_compare(tmp_path, ("pretrained", "sepo"))
    fake_runs(exp)
    exp.train()  # finished with the same settings: reused, nothing is trained
    assert "finished run in" in capsys.readouterr().out
    other = prepare("toy", tmp_path, ["sepo"], [32], [0, 1], design_size=8, design_batches=2,
                    sets=[*SMALL[1::2], "lr=1e-3"])  # fmt: skip
    with pytest.raises(ValueError, match="was trained with other settings .* use another --output"):
        other.train()


def test_prompted_rows_complete_the_same_prompts_and_best_of_n_picks_per_prompt(tmp_path):
    import pandas as pd

    exp = prepare("tests.prompt_task:EchoTask", tmp_path, ["pretrained", "best_of_n"], [16], [0, 1],
                  design_size=4, design_batches=2)  # fmt: skip
    run_experiment(exp)
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    for seed in (0, 1):
        a, b = (
            samples[(samples["row"] == r) & (samples["seed"] == seed)] for r in ("pretrained", "best_of_n")
        )
        assert len(a) == len(b) == 8 and list(a["prompt"]) == list(b["prompt"])
    rows = {
        r["name"]: r["metrics"]["reward_mean"]["mean"]
        for r in json.loads((tmp_path / "comparison.json").read_text())["rows"]
    }
    assert rows["best_of_n"] > rows["pretrained"]  # the best of 4 completions of each prompt


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--budgets", "36"], "must be a multiple of --design-size"),
        (["--budgets", "36", "--methods", "sepo"], "not a whole number of iterations of 8 sequences"),
        (
            ["--tune-trials", "2", "--tune-calls", "12"],
            "--tune-calls for sepo: 12 calls is not a whole number",
        ),
        (["--tune-only"], "--tune-only needs --tune-trials >= 1"),
        (["--set", "bogus.lr=1"], "'bogus' is not a fine-tuning entry here"),
        (["--set", "reward=x:y"], "trains and selects every method on the task's reward"),
        (["--set", "sepo.reward=x:y"], "trains and selects every method on the task's reward"),
        (["--methods", "sepo_fast"], "unknown method 'sepo_fast'"),
        (["--set", "lr=nan"], "--set lr=nan: takes finite numbers"),
    ],
)
def test_bad_experiments_are_one_line_errors_before_anything_runs(tmp_path, capsys, extra, message):
    args = ["toy", "--output", str(tmp_path), "--budgets", "32,64", "--design-size", "8", "--design-batches", "2",
            "--seeds", "0,1", "--tune-trials", "0", "--methods", "pretrained,best_of_n,sepo,finetuned_best_of_n",
            *SMALL]  # fmt: skip
    assert frontier_main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_best_row_keeps_to_the_realism_guard():
    def row(entry, score, realism):
        return {"entry": entry, "metrics": {"s": {"mean": score}, "r": {"mean": realism}}}

    rows = [row("hack", 3.0, 0.5), row("real", 1.0, 0.95), row("pretrained", -1.0, 0.97)]
    assert best_row(rows, "s", "r", 0.9)["entry"] == "real"
    assert best_row(rows, "s", None, 0.9)["entry"] == "hack"
    assert best_row(rows, "s", "r", 0.99) is None


def test_every_entry_gets_the_same_search():
    from sepo_ray.experiment.plan import plan_entries
    from sepo_ray.experiment.tuning import TUNE_CLOCK, tuning_sweep
    from sepo_ray.tasks import get_task

    task = get_task("toy")
    entries = plan_entries(["sepo", "sepo_t", "trajectory", "actor_critic"])
    specs = {m: tuning_sweep(task, e, {"denoise_steps": 4}, ["kl_alpha", "lr"], 4, 0, 64, 0.85, 64, 2)
             for m, e in entries.items()}  # fmt: skip
    first = specs["sepo"]
    for m, spec in specs.items():
        assert {k: spec.base_config[k] for k in entries[m].settings} == dict(entries[m].settings)
        for key in ("search_space", "scheduler", "num_samples", "search_seed", "select_min", "stop"):
            assert getattr(spec, key) == getattr(first, key), key
    assert first.scheduler.time_attr == "num_env_steps_sampled_lifetime" == TUNE_CLOCK
    assert (first.scheduler.max_t, first.scheduler.grace_period) == (64, 16) and first.stop == {}
    assert first.select_min == {"sepo/validation_realism": 0.85}
    assert [p.field for p in first.search_space] == ["kl_alpha", "lr"]
    dna = tuning_sweep(get_task("dna"), entries["trajectory"], {}, ["kl_alpha"], 2, 0, 64, 0.9, 64, 2)
    assert dna.base_config["reward"] == "dna_ft" == get_task("dna").default_reward  # the benchmark's reward
    assert "kl_alpha" not in dna.base_config  # searched, though DNA's run defaults fix it


def test_tuning_validates_at_the_rungs_and_the_end_only():
    """Each validation check is charged validation_samples calls: a trial checks at ASHA's rungs and its end."""
    from sepo_ray.experiment.plan import plan_entries
    from sepo_ray.experiment.tuning import charged_calls, tuning_sweep
    from sepo_ray.sweeps import sweep_report
    from sepo_ray.sweeps.report import asha_rungs
    from sepo_ray.tasks import get_task

    dna, entry = get_task("dna"), plan_entries(["trajectory"])["trajectory"]
    spec = tuning_sweep(dna, entry, {}, ["kl_alpha", "lr"], 4, 0, 2048, 0.85, 128, 2)
    interval = spec.base_config["validation_interval"]
    assert interval == 16  # 32 sequences per iteration: 512 calls, the first rung
    checks = [i * 32 for i in range(1, 2048 // 32 + 1) if i % interval == 0]
    assert checks == [512, 1024, 1536, 2048] and set(asha_rungs(spec.scheduler)) <= set(checks)
    # a full trial is charged 2,048 training calls and 4 x 128 validation calls (it was 32 x 128 every 2 iterations)
    history = [{"num_env_steps_sampled_lifetime": c, "sepo/validation_calls": 128 * (c // 512),
                "sepo/reward_mean": 0.0, "sepo/validation_score": 0.0, "sepo/validation_realism": 0.9}
               for c in range(32, 2049, 32)]  # fmt: skip
    report = sweep_report(spec, [{"trial_id": "a", "status": "TERMINATED", "config": {}, "history": history}])
    assert charged_calls(report) == 2048 + 512
    small = tuning_sweep(dna, entry, {}, ["kl_alpha"], 2, 0, 64, 0.9, 64, 2)  # 2 iterations: check each
    assert small.base_config["validation_interval"] == 1
    toy = tuning_sweep(get_task("toy"), entry, {"prompts_per_batch": 2, "group_size": 5}, ["kl_alpha"], 2, 0, 100,
                       0.0, 8, 2)  # fmt: skip
    assert toy.base_config["validation_interval"] == 2  # 10 iterations: a quarter is 2 (floor), dividing 10


def test_realism_thresholds_come_from_the_task(tmp_path):
    from sepo_ray.tasks import get_task

    dna, toy = get_task("dna"), get_task("toy")
    assert dna.validation_realism_min > 0 and toy.validation_realism_min == 0
    assert (
        get_task("text").validation_realism_min > 0
    )  # selection on the training reward needs a realism floor
    exp = prepare(
        "dna", tmp_path, ["pretrained"], [64], [0], design_size=8, design_batches=1, references=False
    )
    assert (exp.realism, exp.realism_min) == (dna.scorer().realism_metric, dna.scorer().realism_min)
    assert exp.realism_min > 0
    exp = prepare("toy", tmp_path, ["pretrained"], [64], [0], design_size=8, design_batches=1)
    assert (exp.realism, exp.realism_min) == (None, 0.0)
    assert Tuning().realism_min == 0.0


@pytest.mark.slow
def test_frontier_rows_spend_their_budget_and_a_rerun_evaluates_nothing(
    ray_session, tmp_path, monkeypatch, capsys
):
    args = ["toy", "--output", str(tmp_path), "--budgets", "32,64", "--design-size", "8", "--design-batches", "2",
            "--seeds", "0,1", "--tune-trials", "0", "--svdd-candidates", "2",
            "--methods", "pretrained,best_of_n,svdd,sepo,finetuned_best_of_n", *SMALL, "--set", "sepo.kl_alpha=0.5"]  # fmt: skip
    assert frontier_main(args) == 0
    report = json.loads((tmp_path / "comparison.json").read_text())
    rows = {(r["entry"], r["budget_calls"]): r for r in report["rows"]}
    expected = {("pretrained", 0)} | {
        (m, b) for m in ("best_of_n", "svdd", "sepo", "finetuned_best_of_n") for b in (32, 64)
    }
    expected.add(("sepo", 16))  # the half budget finetuned_best_of_n picks its method at
    assert set(rows) == expected
    for (entry, budget), row in rows.items():
        assert row["calls"]["fine_tuning"] + row["calls"]["selection"] == budget, (entry, budget)
    assert rows[("svdd", 64)]["counted_calls"] == {"0": [64, 64], "1": [64, 64]}
    assert rows[("sepo", 64)]["config"]["kl_alpha"] == 0.5 and rows[("sepo", 64)]["iterations"] == 8
    assert rows[("sepo", 64)]["name"] == "sepo@64"  # several budgets: rows named entry@budget
    combo = rows[("finetuned_best_of_n", 64)]
    assert combo["calls"] == {"fine_tuning": 32, "selection": 32} and combo["config"]["n"] == 4
    assert combo["config"]["base_entry"] == "sepo" and combo["config"]["iterations"] == 4
    assert combo["config"]["chosen_by"] == "validation"  # never the evaluation rows
    # the protocol: 95 % intervals next to every mean, the seeds, the K-design cost axis
    protocol = report["protocol"]
    assert protocol["report_seeds"] == [0, 1] and protocol["tuning_seeds"] == [] and protocol["exploratory"]
    assert protocol["designs"] == [64, 640, 6400] and protocol["tuning_calls"]["sepo"] == 0
    for row in report["rows"]:
        for m in row["metrics"].values():
            assert len(m["ci95"]) == 2 and len(m["values"]) == 2
            assert m["ci95"][0] <= m["mean"] <= m["ci95"][1] or m["ci95"][0] != m["ci95"][0]
    assert set(report["winners_by_designs"]) == {"64", "640", "6400"}
    # best-of-N pays per design: 6,400 designs at 4 calls each are 25,600 calls, far over sepo's 64
    w = report["winners_by_designs"]["6400"]
    assert w["budget_calls"] == 64 and not any(e["method"] == "best_of_n" for e in w["entries"])
    assert "Exploratory" in (tmp_path / "table.md").read_text()
    record = json.loads((tmp_path / "runs" / "sepo" / "seed1" / "result.json").read_text())
    assert [c.rsplit("_", 1)[1] for c in record["checkpoints"]] == ["0002", "0004", "0006", "0008"]
    assert record["sources"]["kl_alpha"] == "--set" and record["sources"]["reward"] != "--set"
    assert (tmp_path / "frontier.png").stat().st_size > 0

    monkeypatch.setattr(evaluation, "evaluate_rows", lambda *a, **k: pytest.fail("evaluated again"))
    monkeypatch.setattr("sepo_ray.training.train", lambda *a, **k: pytest.fail("trained again"))
    capsys.readouterr()
    assert frontier_main(args) == 0
    assert capsys.readouterr().out.count(": reusing ") == len(expected)
    assert json.loads((tmp_path / "comparison.json").read_text()) == report
    assert (
        frontier_main([*args[:-1], "sepo.kl_alpha=0.1"]) == 2
    )  # a run trained otherwise is never overwritten
    assert "use another --output" in capsys.readouterr().err


def test_tuning_writes_its_choice_and_the_runs_use_it(ray_session, tmp_path, monkeypatch, capsys):
    from sepo_ray import sweeps
    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.runtime import write_json

    searched = []

    def fake_sweep(spec, output, resume=False, **kwargs):  # Tune itself is tested in test_sweep
        sweeps.check_against_config(spec, SEPOConfig)  # the spec is one SEPOConfig accepts
        searched.append(spec)
        rows = [{"trial_id": "a", "status": "TERMINATED", "config": {"kl_alpha": 0.05}, "history": [
            {"sepo/reward_mean": 0.3, "num_env_steps_sampled_lifetime": 16, "training_iteration": 2}]}]  # fmt: skip
        report = sweeps.sweep_report(spec, rows)
        write_json(output / "sweep.json", report)
        return report

    monkeypatch.setattr(sweeps, "run_sweep", fake_sweep)
    args = ["toy", "--output", str(tmp_path), "--budgets", "16", "--design-size", "8", "--design-batches", "1",
            "--seeds", "0", "--methods", "sepo", "--tune-trials", "3", *SMALL, "--set", "sepo.lr=1e-3",
            "--tune-realism", "0", "--tune-calls", "16"]  # fmt: skip
    assert frontier_main([*args, "--tune-only"]) == 0  # tunes, trains nothing
    (spec,) = searched
    assert spec.num_samples == 3 and [p.field for p in spec.search_space] == ["kl_alpha"]  # lr fixed by --set
    assert spec.scheduler.max_t == 16 and spec.base_config["lr"] == 1e-3
    assert spec.base_config["seed"] == 1000 and spec.select_metric == "sepo/validation_score"  # a tuning seed
    assert "tuned sepo: {'kl_alpha': 0.05} (tune)" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "comparison.json").exists()
    assert frontier_main(args) == 0 and len(searched) == 1  # the experiment reuses the search it tuned
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    assert tuning["sepo"]["source"] == "tune" and tuning["sepo"]["config"] == {"kl_alpha": 0.05}
    record = json.loads((tmp_path / "runs" / "sepo" / "seed0" / "result.json").read_text())
    assert (record["settings"]["kl_alpha"], record["sources"]["kl_alpha"]) == (0.05, "tuned")
    assert (record["settings"]["lr"], record["sources"]["lr"]) == (1e-3, "--set")
    report = json.loads((tmp_path / "comparison.json").read_text())
    assert report["rows"][0]["config"]["kl_alpha"] == 0.05 and report["tuning"]["sepo"]["source"] == "tune"
    # every call the tuning spent is charged to the method: the trial's 16 sequences
    assert report["protocol"]["tuning_calls"] == {"sepo": 16} and report["rows"][0]["tuning_calls"] == 16
    assert report["protocol"]["tuning_seeds"] == [1000] and report["protocol"]["tuned_horizon_calls"] == 16
    assert frontier_main([*args, "--tuning-seed", "0"]) == 2  # a seed that tunes is never reported
    assert "would both tune and be reported" in capsys.readouterr().err
    capsys.readouterr()
    assert frontier_main(args) == 0 and len(searched) == 1  # the same search: reused, not run again
    assert "tuning sepo: reusing" in capsys.readouterr().out


def test_a_tuning_stopped_by_ctrl_c_chooses_nothing_and_the_same_command_resumes_it(
    tmp_path, monkeypatch, capsys
):
    from sepo_ray import sweeps
    from sepo_ray.runtime import write_json

    cut = {"now": True}

    def fake_sweep(spec, output, resume=False, **kwargs):  # Ctrl-C inside Tune: a cut report
        assert "same compare / frontier command" in kwargs["resume_hint"]  # not a sweep FILE the user lacks
        status = "interrupted" if cut["now"] else "TERMINATED"
        rows = [{"trial_id": "a", "status": status, "config": {"kl_alpha": 0.05}, "history": [
            {"sepo/reward_mean": 0.3, "num_env_steps_sampled_lifetime": 16, "training_iteration": 2}]}]  # fmt: skip
        report = sweeps.sweep_report(spec, rows, resume_command=kwargs["resume_hint"] if cut["now"] else None)
        write_json(output / "sweep.json", report)
        return report

    monkeypatch.setattr(sweeps, "run_sweep", fake_sweep)
    args = ["toy", "--output", str(tmp_path / "exp dir"), "--budgets", "16", "--design-size", "8",
            "--design-batches", "1", "--seeds", "0", "--methods", "sepo", "--tune-trials", "3", *SMALL, "--set", "lr=1e-3",
            "--tune-realism", "0", "--tune-calls", "16", "--tune-only"]  # fmt: skip
    assert frontier_main(args) == 130
    err = capsys.readouterr().err
    assert "Resume with: sepo-ray frontier toy --output '" in err and "Traceback" not in err
    # the cut search chose nothing: no "defaults" saved that a resumed command would reuse
    assert not (tmp_path / "exp dir" / "tuning.json").exists()
    cut["now"] = False
    assert frontier_main(args) == 0
    tuning = json.loads((tmp_path / "exp dir" / "tuning.json").read_text())
    assert tuning["sepo"]["source"] == "tune" and tuning["sepo"]["config"] == {"kl_alpha": 0.05}


def test_compare_defaults_to_the_task_run_budget_and_the_table_2_methods(tmp_path, capsys, monkeypatch):
    import sepo_ray.experiment.pipeline as pipeline

    seen = {}
    monkeypatch.setattr(pipeline, "run_experiment", lambda exp, tune_only=False: seen.setdefault("exp", exp))
    monkeypatch.setattr(
        "sepo_ray.experiment.run_experiment", lambda exp, tune_only=False: seen.setdefault("exp", exp)
    )
    assert compare_main(["dna", "--output", str(tmp_path), "--design-batches", "1"]) == 0
    exp = seen["exp"]
    assert exp.budgets == [512] and exp.references and exp.tuning.trials == 0
    assert list(exp.entries) == ["pretrained", "best_of_n", "sepo", "sepo_no_snis", "sepo_gradient_flow",
                                 "trajectory", "sepo_t", "actor_critic"]  # fmt: skip


def test_default_methods_leave_out_what_the_task_cannot_run(tmp_path, capsys, monkeypatch):
    seen = {}

    def prepare(task, output, methods, *rest):
        seen["methods"] = methods
        raise ValueError("stop here")

    monkeypatch.setattr("sepo_ray.experiment.prepare", prepare)
    assert frontier_main(["text", "--output", str(tmp_path)]) == 2
    assert "svdd" not in seen["methods"] and "best_of_n" in seen["methods"]
    assert "leaving out svdd for task text: SVDD does not condition on prompts" in capsys.readouterr().out
    assert frontier_main(["dna", "--output", str(tmp_path)]) == 2
    assert "svdd" in seen["methods"]


def test_tuning_runs_as_many_trials_at_once_as_the_cpus_hold_at_their_threads(monkeypatch):
    from sepo_ray.experiment.plan import plan_entries
    from sepo_ray.experiment.tuning import tuning_sweep
    from sepo_ray.tasks import get_task

    monkeypatch.setattr("sepo_ray.resolve.machine_threads", lambda: 2)
    entry = plan_entries(["sepo"])["sepo"]

    def at_once(fixed, cpus, trials=4):
        return tuning_sweep(
            get_task("toy"), entry, fixed, ["kl_alpha"], trials, 0, 64, 0.0, 64, cpus
        ).max_concurrent_trials

    assert at_once({}, 2) == 1  # torch_threads 0: each trial runs 2 threads, as the reported runs do
    assert at_once({"torch_threads": 1}, 2) == 2
    assert at_once({"torch_threads": 2}, 8) == 4 and at_once({"torch_threads": 2}, 8, trials=3) == 3
    assert at_once({"torch_threads": 4}, 2) == 1


def test_tuning_is_charged_its_training_and_validation_calls():
    from sepo_ray.experiment.tuning import charged_calls

    trials = [
        {"metrics": {"num_env_steps_sampled_lifetime": 512.0, "sepo/validation_calls": 1024.0,
                     "sepo/validation_score": {"num_reports": 8}}},
        {"metrics": {"num_env_steps_sampled_lifetime": 128.0, "sepo/validation_calls": 256.0,
                     "sepo/validation_score": {"num_reports": 2}}},
    ]  # fmt: skip
    assert charged_calls({"trials": trials}) == 512 + 1024 + 128 + 256
    # a sweep.json written before the validation count was kept: charged the samples of each validation report
    for t in trials:
        t["metrics"]["sepo/validation_calls"] = None
    assert charged_calls({"trials": trials}, validation_samples=128) == 512 + 8 * 128 + 128 + 2 * 128
    assert charged_calls({"trials": trials}) == 512 + 128  # nothing to count them by
