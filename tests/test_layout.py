"""One engine, many tasks: the registry, the README's example task, and what the engine may not name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sepo_ray.tasks import Task, available_tasks, get_task, register_task

ROOT = Path(__file__).resolve().parents[1]
ENGINE = [
    p for p in (ROOT / "sepo_ray").rglob("*.py") if "tasks" not in p.relative_to(ROOT / "sepo_ray").parts
]
ENGINE += list((ROOT / "envs").rglob("*.py"))
DNA_METRIC = re.compile(r"pred_activity|hepg2|(?<![a-z])atac|kmer3|jaspar", re.IGNORECASE)


def test_engine_names_no_dna_metric():
    found = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in ENGINE
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if DNA_METRIC.search(line)
    ]
    assert not found, "\n".join(found)


def test_no_package_module_past_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.glob("sepo_ray/**/*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, long


def test_pyproject_lists_every_package_and_envs_installs_inside_sepo_ray():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("sepo_ray/**/__init__.py")}
    assert set(setup["packages"]) == folders | {"sepo_ray.envs"}
    assert setup["package-dir"] == {"sepo_ray.envs": "envs"}  # no global package named `envs`
    import sepo_ray.envs

    assert Path(sepo_ray.envs.__file__).resolve().parent == ROOT / "envs"


def test_registry_lists_builtin_tasks_and_names_them_in_errors():
    assert {"dna", "toy"} <= set(available_tasks())
    assert get_task("toy") is get_task("toy")  # one cached instance per name
    with pytest.raises(ValueError, match=r"unknown task 'dnaa'; installed tasks: dna, .*toy"):
        get_task("dnaa")
    with pytest.raises(ValueError, match="cannot import module"):
        get_task("no_such_module:Task")
    with pytest.raises(ValueError, match="not a sepo_ray.tasks.Task"):
        get_task("sepo_ray.tasks.toy:fraction_a")


def test_another_installed_package_adds_a_task_through_its_entry_point(tmp_path, monkeypatch):
    (tmp_path / "other_tasks.py").write_text(
        "from sepo_ray.tasks.toy import ToyTask\n\nclass LongToy(ToyTask):\n    name = 'long_toy'\n    length = 24\n"
    )
    info = tmp_path / "other_tasks-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: other-tasks\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sepo_ray.tasks]\nlong_toy = other_tasks:LongToy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available_tasks()["long_toy"] == "other_tasks:LongToy"
    assert get_task("long_toy").length == 24


def test_register_task_in_process():
    class Tiny(Task):
        name, description = "tiny", "a test task"
        length, num_tokens, alphabet, default_reward = 3, 2, "XY", "sepo_ray.tasks.toy:fraction_a"

    register_task("tiny", Tiny)
    assert get_task("tiny").decode([[0, 1, 1]]) == ["XYY"]
    assert get_task("tiny").encode(["YXY"]).tolist() == [[1, 0, 1]]
    with pytest.raises(ValueError, match=r"sequences\[0\]: invalid character 'Z'"):
        get_task("tiny").encode(["XYZ"])


def test_run_help_lists_the_installed_tasks(capsys):
    from sepo_ray.run import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "installed tasks" in out and re.search(r"^\s+dna\s+200 bp", out, re.M) and "toy" in out


def _readme_block(lang: str, after: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"```{lang}\n", text.index(after)) + len(lang) + 4
    return text[start : text.index("```", start)]


@pytest.mark.slow
def test_readme_example_task_runs_as_written(tmp_path):
    """The README's "Adding a task" file and command, run exactly as a user would."""
    code = _readme_block("python", "### Adding a task")
    command = _readme_block("bash", "### Adding a task").strip()
    assert code.startswith("# my_task.py\n") and command.startswith("PYTHONPATH=. python -m sepo_ray.run ")
    (tmp_path / "my_task.py").write_text(code)
    _, _, rest = command.partition(" ")  # PYTHONPATH=. is set in env below
    argv = [sys.executable, *rest.split()[1:], "--output", "runs/palindrome", "--num-cpus", "1"]
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "SEPO on task 'palindrome': L=12" in run.stdout
    assert "iter  20/20" in run.stdout and "reward_mean" in run.stdout
    assert (
        tmp_path / "runs" / "palindrome" / "checkpoints" / "iter_0020" / "generator.safetensors"
    ).is_file()
