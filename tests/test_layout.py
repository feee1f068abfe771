"""One engine, many tasks: the registry, the README's example task, and what the engine may not name."""

from __future__ import annotations

import json
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


def test_no_module_past_400_lines():
    files = [*ROOT.glob("sepo_ray/**/*.py"), *ROOT.glob("envs/**/*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of sepo_ray (envs installs as sepo_ray.envs) it imports, at any depth of the code
    (function-level imports and ``TYPE_CHECKING`` blocks included)."""
    import ast

    files = {}
    for folder, package in (("sepo_ray", "sepo_ray"), ("envs", "sepo_ray.envs")):
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            files[".".join([package, *parts])] = path

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name.replace("envs.", "sepo_ray.envs.", 1) if a.name.startswith("envs") else a.name
                         for a in node.names]  # fmt: skip
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(
                        here[: len(here) - node.level + 1] + ([node.module] if node.module else [])
                    )
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            deps |= {d for n in names if (d := known(n)) and d != module}
        graph[module] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (a list of modules, first = last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_is_a_tree_of_modules_and_of_packages():
    graph = _import_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    packages = {}
    for module, deps in graph.items():
        top = ".".join(module.split(".")[:2])
        packages.setdefault(top, set()).update(".".join(d.split(".")[:2]) for d in deps)
    packages = {k: v - {k} for k, v in packages.items()}
    assert _cycle(packages) is None, " -> ".join(_cycle(packages))
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the check finds a circle when there is one


def test_library_code_never_imports_a_command_line_module():
    commands = {"sepo_ray.cli", "sepo_ray.run", "sepo_ray.evaluate", "sepo_ray.compare", "sepo_ray.frontier",
                "sepo_ray.sweep", "sepo_ray.bench", "sepo_ray.pretrain", "sepo_ray.design", "sepo_ray.export"}  # fmt: skip
    graph = _import_graph()
    library = {m for m in graph if not any(m == c or m.startswith(c + ".") for c in commands)}
    bad = {
        m: sorted(d for d in graph[m] if any(d == c or d.startswith(c + ".") for c in commands))
        for m in library
    }
    assert not {m: d for m, d in bad.items() if d}


def test_registries_are_read_from_entry_points_only():
    import tomllib

    from sepo_ray.models.io import _model_class
    from sepo_ray.oracles import oracle_specs

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["sepo_ray.tasks"].items() <= available_tasks().items()
    assert {k: v for k, v in oracle_specs().items() if k in declared["sepo_ray.oracles"]} == declared[
        "sepo_ray.oracles"
    ]
    for name, spec in declared["sepo_ray.models"].items():
        cls = _model_class(name)
        assert f"{cls.__module__}:{cls.__qualname__}" == spec
    source = "\n".join(p.read_text() for p in (ROOT / "sepo_ray").rglob("*.py"))
    assert "BUILTIN_TASKS" not in source and "import_all_tasks" not in source


def test_one_command_lists_every_subcommand_and_python_m_still_works():
    import shutil

    exe = Path(sys.executable).parent / "sepo-ray"
    exe = str(exe) if exe.exists() else shutil.which("sepo-ray")
    assert exe, "the sepo-ray console script is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for command in (
        "run",
        "evaluate",
        "compare",
        "frontier",
        "sweep",
        "bench",
        "pretrain",
        "design",
        "export",
    ):
        assert re.search(rf"^\s+{command}\s", out.stdout, re.M), out.stdout
    bad = subprocess.run([exe, "trian"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr
    for command in (
        "run",
        "evaluate",
        "compare",
        "frontier",
        "sweep",
        "bench",
        "pretrain",
        "design",
        "export",
    ):
        via_m = subprocess.run([sys.executable, "-m", f"sepo_ray.{command}", "--help"], capture_output=True,
                               text=True, timeout=120, cwd=ROOT)  # fmt: skip
        assert via_m.returncode == 0 and f"sepo-ray {command}" in via_m.stdout + via_m.stderr, command


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
    from sepo_ray.cli.run import parse_args

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
    """The README's "Adding a task" file and commands, run exactly as a user would: a third-party task with
    its own pretrained generator (refused with one line before it exists), fine-tuned, then evaluated and
    compared by the unchanged commands."""
    code = _readme_block("python", "### Adding a task")
    commands = _readme_block("bash", "### Adding a task").strip().splitlines()
    assert code.startswith("# my_task.py\n") and len(commands) == 2
    assert [c.split()[:4] for c in commands] == [
        ["PYTHONPATH=.", "python", "-m", "sepo_ray.pretrain"],
        ["PYTHONPATH=.", "python", "-m", "sepo_ray.run"],
    ]
    (tmp_path / "my_task.py").write_text(code)
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)

    def run(command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    pretrain, train = ([sys.executable, *c.split()[2:]] for c in commands)
    train += ["--output", "runs/palindrome", "--num-cpus", "1"]
    early = run(train)  # before the generator exists: one line, before Ray starts, no run folder left
    assert early.returncode == 2 and "generator.safetensors is missing" in early.stderr
    assert len(early.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
    done = run(pretrain)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "palindrome" / "generator.safetensors").is_file()
    done = run(train)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "SEPO on task 'palindrome': L=12" in done.stdout and "iter  20/20" in done.stdout
    assert "in_runs" in done.stdout and "reward_mean" in done.stdout  # the task's own scorer
    assert (
        tmp_path / "runs" / "palindrome" / "checkpoints" / "iter_0020" / "generator.safetensors"
    ).is_file()
    model = tmp_path / "runs" / "palindrome" / "checkpoints" / "iter_0020" / "generator.safetensors"
    evaluate = run([sys.executable, "-m", "sepo_ray.evaluate", "my_task:PalindromeTask", "--model", f"pretrained,{model}",
                    "--num-samples", "64", "--seeds", "0,1", "--steps", "8", "--output", "eval"])  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"pretrained", "generator", "real"} <= set(metrics) and metrics["real"]["in_runs"]["mean"] == 1.0
    compare = run([sys.executable, "-m", "sepo_ray.compare", "my_task:PalindromeTask", "--methods", "pretrained,best_of_n",
                   "--budgets", "32", "--design-size", "8", "--design-batches", "2", "--seeds", "0,1",
                   "--steps", "8", "--output", "cmp"])  # fmt: skip
    assert compare.returncode == 0, compare.stderr[-3000:]
    report = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["pretrained", "best_of_n"]
    assert report["realism_metric"] == "in_runs" and report["realism_min"] == 0.5
