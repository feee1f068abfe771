"""Nothing lost, nothing silently wrong: refused input, divergence, exact and relocatable resume, Ctrl-C."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SMALL = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4", "--no-eval"]


def run(out: Path, *extra: str) -> int:
    from sepo_ray.cli.run import main

    return main(["toy", "--output", str(out), *extra])


def history(out: Path) -> list[dict]:
    return json.loads((out / "result.json").read_text())["history"]


REWARD_KEYS = ("iteration", "reward_mean", "reward_median", "kl", "clip_frac")


@pytest.mark.parametrize(
    "setting,message",
    [
        ("lr=nan", "--set lr=nan: takes finite numbers"),
        ("lr=-1", "--set lr=-1: must be > 0"),
        ("num_epochs=0", "--set num_epochs=0: must be >= 1"),
        ("kl_alpha=inf", "--set kl_alpha=inf: takes finite"),
        ("clip_eps=inf", "--set clip_eps=inf: takes finite"),
        ("clip_eps=1.5", "--set clip_eps=1.5: must be < 1"),
        ("gamma=nan", "--set gamma=nan: takes finite numbers"),
        ("num_cpus_per_env_runner=-1", "--set num_cpus_per_env_runner=-1: must be >= 0"),
        ("train_batch_size_per_learner=-1", "derived by SEPO"),
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


def test_output_mistakes_are_found_before_ray_starts(tmp_path, capsys, monkeypatch):
    import os

    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started before the output was checked"))
    (tmp_path / "afile").write_text("x")
    assert run(tmp_path / "afile" / "sub") == 2
    assert f"lies under the file {tmp_path / 'afile'}" in capsys.readouterr().err
    # a folder that holds checkpoints is a run folder, whatever its result.json says (here: none)
    (tmp_path / "old" / "checkpoints" / "iter_0002").mkdir(parents=True)
    assert run(tmp_path / "old") == 2
    assert "holds checkpoints of an earlier run (iter_0002" in capsys.readouterr().err
    (tmp_path / "ro").mkdir(mode=0o555)
    if os.geteuid() == 0:  # root writes through permission bits: stand in for a read-only mount
        import errno
        import tempfile

        def read_only(*args, dir=None, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    assert run(tmp_path / "ro" / "r") == 2
    assert f"--output {tmp_path / 'ro' / 'r'}: {tmp_path / 'ro'} is not writable" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started before the output was checked"))
    assert run(tmp_path / "r", "--seed", "-1") == 2
    assert "--seed -1: must be >= 0" in capsys.readouterr().err
    for flag in ("--eval-samples", "--num-cpus", "--iterations"):
        with pytest.raises(SystemExit) as exit_:
            run(tmp_path / "r", flag, "0")
        assert exit_.value.code == 2 and f"{flag} must be >= 1, got 0" in capsys.readouterr().err


def test_a_task_without_its_generator_is_refused_before_ray(tmp_path, capsys, monkeypatch):
    import ray

    from sepo_ray.tasks import Task, register_task

    class Missing(Task):
        name, description = "missing", "a task whose generator file is absent"
        length, num_tokens, alphabet, default_reward = 4, 2, "XY", "sepo_ray.tasks.toy:fraction_a"
        artifact_dir = tmp_path / "artifacts"

    register_task("missing", Missing)
    monkeypatch.setattr(
        ray, "init", lambda *a, **k: pytest.fail("Ray started before the task's files were checked")
    )
    from sepo_ray.cli.run import main

    assert main(["missing", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "generator.safetensors is missing; build it with: sepo-ray pretrain missing" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


def test_pretrain_never_writes_over_a_shipped_artifact_or_other_models(tmp_path, capsys):
    import hashlib

    from sepo_ray.cli.pretrain import main
    from sepo_ray.tasks.dna.models import ARTIFACT_DIR
    from sepo_ray.tasks.dna.pretrain import DEFAULT_OUTPUT

    def digest(folder):
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }

    shipped = digest(ARTIFACT_DIR)
    # another task's pretraining aimed at DNA's shipped folder, and DNA's own: refused before any training
    for argv in (["text", "--only", "generator", "--max-steps", "1", "--output", str(ARTIFACT_DIR)],
                 ["text", "--only", "generator", "--max-steps", "1", "--output", str(ARTIFACT_DIR), "--overwrite"],
                 ["dna", "--only", "generator", "--output", str(ARTIFACT_DIR / "sub")]):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "inside the installed sepo_ray package" in err and len(err.splitlines()) == 1, err
    assert digest(ARTIFACT_DIR) == shipped
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "generator.safetensors").write_bytes(b"mine")
    assert (
        main(["text", "--only", "generator", "--max-steps", "1", "--output", str(tmp_path / "models")]) == 2
    )
    assert "already holds model files (generator.safetensors): pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "models" / "generator.safetensors").read_bytes() == b"mine"
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
    assert "--seed 5: this run was trained with seed=0" in capsys.readouterr().err
    assert (
        run(tmp_path / "r", "--iterations", "2", "--resume", "--no-eval", "--set", "checkpoint_frequency=2")
        == 0
    )
    record = json.loads((tmp_path / "r" / "result.json").read_text())
    assert record["resumes"] == [{"at_iteration": 1, "changed": {"checkpoint_frequency": 2}}]
    assert record["settings"]["checkpoint_frequency"] == 2 and record["settings"]["seed"] == 0
    assert record["sources"]["checkpoint_frequency"] == "--set (on resume)"


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
    assert not (tmp_path / "d").exists()  # nothing to resume: no run folder is left behind


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
    out = tmp_path / "a run"  # a path with a space: the printed command must paste as it is
    assert run(out, "--iterations", "5", *SMALL) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"interrupted after iteration 2; continue with: python -m sepo_ray.run toy --output '{out}' "
        "--resume --iterations 5"
    )
    assert [h["iteration"] for h in history(out)] == [1, 2]


@pytest.mark.slow
def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path):
    """SIGKILL of a driver that started its own local Ray: every process of that runtime is gone soon after."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from sepo_ray.reaper import session_processes

    script = (
        "import sys, time\n"
        "import psutil, ray\n"
        "from sepo_ray.runtime import init_ray\n"
        "init_ray(num_cpus=1, announce=False)\n"
        "print(ray._private.worker._global_node.get_session_dir_path(), flush=True)\n"
        "time.sleep(3)\n"  # the agents are up
        "print(len(psutil.Process().children(recursive=True)), flush=True)\n"
        "time.sleep(600)\n"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        session = driver.stdout.readline().strip()
        started = int(driver.stdout.readline())
        assert session and started >= 3 and len(session_processes(session, [])) >= 3
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 20
        while session_processes(session, []) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, p.name()) for p in session_processes(session, [])]
        assert not left, f"processes of the killed driver's Ray runtime still alive: {left}"
    finally:
        driver.kill()
