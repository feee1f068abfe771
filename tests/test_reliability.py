"""Nothing lost, nothing silently wrong: refused input, divergence, exact and relocatable resume, Ctrl-C."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SMALL = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4", "--no-eval"]


def run(out: Path, *extra: str) -> int:
    from sepo_ray.run import main

    return main(["toy", "--output", str(out), *extra])


def history(out: Path) -> list[dict]:
    return json.loads((out / "result.json").read_text())["history"]


REWARD_KEYS = ("iteration", "reward_mean", "reward_median", "kl", "clip_frac")


@pytest.mark.parametrize(
    "setting,message",
    [
        ("lr=nan", "SEPOConfig.lr=nan: takes finite numbers"),
        ("lr=-1", "SEPOConfig.lr=-1: must be > 0"),
        ("num_epochs=0", "SEPOConfig.num_epochs=0: must be >= 1"),
        ("kl_alpha=inf", "SEPOConfig.kl_alpha=inf: takes finite"),
        ("clip_eps=inf", "SEPOConfig.clip_eps=inf: takes finite"),
        ("clip_eps=1.5", "SEPOConfig.clip_eps=1.5: must be < 1"),
        ("task=toy", "the task is the command's first argument"),
        ("lr", "expected KEY=VALUE"),
        ("lr=", "lr needs a value"),
        ("no_such_field=1", "not a config field"),
    ],
)
def test_bad_settings_are_one_line_errors_before_ray(tmp_path, capsys, monkeypatch, setting, message):
    import ray

    monkeypatch.setattr(
        ray, "init", lambda *a, **k: pytest.fail("Ray started before the settings were checked")
    )
    assert run(tmp_path / "r", "--set", setting) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r" / "result.json").exists()


def test_reward_and_output_mistakes_are_one_line_errors(tmp_path, capsys):
    assert run(tmp_path / "r", "--reward", "no_such_module:f") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot import module 'no_such_module'" in err and len(err.splitlines()) == 1, err
    (tmp_path / "file").write_text("x")
    assert run(tmp_path / "file") == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert run(tmp_path / "empty", "--resume") == 2
    assert "holds no run (no result.json)" in capsys.readouterr().err
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "result.json").write_text('{"history": [')
    assert run(tmp_path / "corrupt", "--resume") == 2
    assert f"{tmp_path / 'corrupt' / 'result.json'} is not valid JSON" in capsys.readouterr().err


def test_pretrain_never_writes_over_the_shipped_artifacts(capsys):
    from sepo_ray.pretrain import main
    from sepo_ray.tasks.dna.models import ARTIFACT_DIR
    from sepo_ray.tasks.dna.pretrain import DEFAULT_OUTPUT

    with pytest.raises(SystemExit) as exit_:
        main(["dna", "--output", str(ARTIFACT_DIR), "--only", "generator"])
    assert exit_.value.code == 2 and "shipped artifacts" in capsys.readouterr().err
    assert not DEFAULT_OUTPUT.resolve().is_relative_to(ARTIFACT_DIR.parent.resolve())
    assert main(["no_such_task"]) == 2


def test_stopped_moved_and_resumed_run_reproduces_the_uninterrupted_run(ray_session, tmp_path, capsys):
    assert run(tmp_path / "whole", "--iterations", "3", *SMALL) == 0
    assert run(tmp_path / "part", "--iterations", "2", *SMALL) == 0
    # a new run into a directory holding one is refused and names --resume; nothing is overwritten
    before = (tmp_path / "part" / "result.json").read_text()
    assert run(tmp_path / "part", "--iterations", "3", *SMALL) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "part" / "result.json").read_text() == before
    shutil.move(tmp_path / "part", tmp_path / "moved")  # relative paths inside: the copy resumes itself
    assert run(tmp_path / "moved", "--iterations", "3", "--resume", "--no-eval") == 0
    assert f"resumed from {tmp_path / 'moved' / 'checkpoints' / 'iter_0002'}" in capsys.readouterr().out
    whole, resumed = history(tmp_path / "whole"), history(tmp_path / "moved")
    assert [{k: h[k] for k in REWARD_KEYS} for h in resumed] == [
        {k: h[k] for k in REWARD_KEYS} for h in whole
    ]
    record = json.loads((tmp_path / "moved" / "result.json").read_text())
    assert record["final_checkpoint"] == "checkpoints/iter_0003" and record["resumes"][0]["at_iteration"] == 2
    assert str(tmp_path) not in (tmp_path / "moved" / "result.json").read_text()


def test_resume_refuses_other_settings_and_records_allowed_ones(ray_session, tmp_path, capsys):
    assert run(tmp_path / "r", "--iterations", "1", *SMALL) == 0
    assert run(tmp_path / "r", "--iterations", "2", "--resume", "--set", "lr=1e-3") == 2
    assert "--set lr: this run was trained with lr=0.0003" in capsys.readouterr().err
    assert run(tmp_path / "r", "--iterations", "2", "--resume", "--seed", "5") == 2
    assert "--seed 5: this run was trained with seed 0" in capsys.readouterr().err
    assert (
        run(tmp_path / "r", "--iterations", "2", "--resume", "--no-eval", "--set", "checkpoint_frequency=2")
        == 0
    )
    record = json.loads((tmp_path / "r" / "result.json").read_text())
    assert record["resumes"] == [{"at_iteration": 1, "changed": {"checkpoint_frequency": 2}}]
    assert record["overrides"]["checkpoint_frequency"] == 2 and record["seed"] == 0


def test_unreadable_last_checkpoint_falls_back_to_the_previous_one(ray_session, tmp_path, capsys):
    assert run(tmp_path / "r", "--iterations", "2", *SMALL) == 0
    for f in (tmp_path / "r" / "checkpoints" / "iter_0002").rglob("*.pkl"):
        f.write_bytes(b"truncated")
    assert run(tmp_path / "r", "--iterations", "3", "--resume", "--no-eval") == 0
    out = capsys.readouterr().out
    assert "iter_0002 is unreadable" in out and "at iteration 1" in out
    assert [h["iteration"] for h in history(tmp_path / "r")] == [1, 2, 3]


def test_diverging_run_stops_and_keeps_its_last_good_checkpoint(ray_session, tmp_path, capsys):
    assert run(tmp_path / "r", "--iterations", "1", *SMALL) == 0
    # a learning rate that blows the weights up: the loss turns non-finite, the run stops at once
    rc = run(tmp_path / "r", "--iterations", "3", "--resume", "--no-eval", "--set", "lr=1e30")
    assert rc == 2  # lr is not a setting a resume may change
    capsys.readouterr()
    rc = run(tmp_path / "d", "--iterations", "3", *SMALL, "--set", "lr=1e30", "--set", "grad_clip=null")
    err = capsys.readouterr().err
    assert rc == 3 and "iteration 1 diverged: non-finite" in err and "lower lr" in err, err
    record = json.loads((tmp_path / "d" / "result.json").read_text())
    assert record["history"] == [] and record["final_checkpoint"] is None
    assert not (tmp_path / "d" / "checkpoints").exists()


def test_ctrl_c_prints_how_to_resume(ray_session, tmp_path, capsys, monkeypatch):
    from sepo_ray.rllib import SEPO

    real = SEPO.training_step
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(SEPO, "training_step", interrupted)
    assert run(tmp_path / "r", "--iterations", "5", *SMALL) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"interrupted after iteration 2; continue with: python -m sepo_ray.run toy --output {tmp_path / 'r'} "
        "--resume --iterations 5"
    )
    assert [h["iteration"] for h in history(tmp_path / "r")] == [1, 2]
