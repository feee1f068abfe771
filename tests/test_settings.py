"""Settings resolved once: the layers in their order, each value's source, resume, the checks before Ray."""

from __future__ import annotations

import json

import pytest

from sepo_ray.resolve import changed_on_resume, resolve_settings
from sepo_ray.rundir import recorded_settings, same_settings
from sepo_ray.settings import SETTINGS
from sepo_ray.tasks import get_task

DNA = get_task("dna")


def test_layers_apply_in_order_and_name_their_source():
    s = resolve_settings(DNA)
    for name, value in DNA.default_settings.items():
        assert (s[name], s.sources[name]) == (value, "task dna")
    assert (s["clip_eps"], s.sources["clip_eps"]) == (SETTINGS["clip_eps"].default, "default")
    assert s["reward"] == "dna_ft_accessible"  # the default run's guarded reward
    s = resolve_settings(DNA, benchmark=True)  # comparisons spend every call on the benchmark's reward
    assert (s["reward"], s.sources["reward"]) == ("dna_ft", "benchmark")
    s = resolve_settings(
        DNA, benchmark=True, method={"objective": "sepo_t", "kl_alpha": 2.0}, tuned={"kl_alpha": 0.3},
        file={"lr": 1e-4}, cli={"lr": 5e-4, "seed": 3},
    )  # fmt: skip
    assert [(s[k], s.sources[k]) for k in ("objective", "kl_alpha", "lr", "seed")] == [
        ("sepo_t", "method"), (0.3, "tuned"), (5e-4, "--set"), (3, "--set"),
    ]  # fmt: skip
    toy = resolve_settings(get_task("toy"))
    assert (toy["reward"], toy.sources["reward"]) == (
        "sepo_ray.tasks.toy:fraction_a",
        "task toy (default reward)",
    )


def test_table_lists_every_setting_with_value_and_source():
    table = resolve_settings(DNA, cli={"kl_alpha": 0.7}).table().splitlines()
    assert table[0].split() == ["setting", "value", "source"]
    assert len(table) == 1 + len(SETTINGS)
    line = next(line for line in table if line.startswith("kl_alpha "))
    assert line.split() == ["kl_alpha", "0.7", "--set"]


@pytest.mark.parametrize(
    "given,message",
    [
        ({"lr": float("nan")}, "--set lr=nan: takes finite numbers"),
        ({"lr": -1}, "--set lr=-1: must be > 0"),
        ({"num_epochs": 0}, "--set num_epochs=0: must be >= 1"),
        ({"clip_eps": 1.5}, "--set clip_eps=1.5: must be < 1"),
        ({"seed": -1}, "--set seed=-1: must be >= 0"),
        ({"gamma": float("nan")}, "--set gamma=nan: takes finite numbers"),
        ({"num_cpus_per_env_runner": -1}, "--set num_cpus_per_env_runner=-1: must be >= 0"),
        ({"num_env_runners": 1.5}, "--set num_env_runners=1.5: takes integers"),
        ({"train_batch_size_per_learner": 64}, "is derived by SEPO from prompts_per_batch * group_size"),
        ({"no_such_field": 1}, "--set no_such_field=1: not a config field"),
        ({"task": "toy"}, "the task is the command's first argument"),
        ({"kl_steps": 99}, "kl_steps=99 (--set): cannot exceed denoise_steps=32"),
    ],
)
def test_every_bad_value_is_refused_with_its_layer(given, message):
    with pytest.raises(ValueError) as err:
        resolve_settings(DNA, cli=given)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cpu_and_gpu_counts_may_be_fractions():
    s = resolve_settings(DNA, cli={"num_cpus_per_env_runner": 0.5, "num_gpus_per_env_runner": 0.25})
    assert s["num_cpus_per_env_runner"] == 0.5 and s["num_gpus_per_env_runner"] == 0.25


def test_a_resume_keeps_the_recorded_values_and_changes_only_resumable_ones():
    first = resolve_settings(DNA, cli={"lr": 1e-4})
    recorded = dict(first.values)
    s = resolve_settings(
        DNA, recorded=recorded, recorded_sources=first.sources, cli={"checkpoint_frequency": 7}
    )
    assert s["lr"] == 1e-4 and s.sources["lr"] == "--set" and s["checkpoint_frequency"] == 7
    assert changed_on_resume(s) == {"checkpoint_frequency": 7}
    same = resolve_settings(DNA, recorded=recorded, cli={"lr": 1e-4, "seed": 0})  # repeating a value is fine
    assert changed_on_resume(same) == {}
    with pytest.raises(
        ValueError, match=r"--seed 3: this run was trained with seed=0; changing it would not"
    ):
        resolve_settings(DNA, recorded=recorded, cli={"seed": 3}, cli_flags={"seed": "--seed"})
    with pytest.raises(ValueError, match=r"--set kl_alpha: this run was trained with kl_alpha=0.25"):
        resolve_settings(DNA, recorded=recorded, cli={"kl_alpha": 1.0})


def test_a_resumed_run_keeps_its_settings_when_the_task_defaults_change(monkeypatch):
    from sepo_ray.tasks.dna import DNATask

    recorded = dict(resolve_settings(DNA).values)
    monkeypatch.setattr(DNATask, "default_settings", {"objective": "sepo", "kl_alpha": 3.0})
    assert resolve_settings(DNA, recorded=recorded)["kl_alpha"] == 0.25
    assert resolve_settings(DNA)["kl_alpha"] == 3.0


def test_records_of_either_format_give_the_settings_they_were_trained_with():
    s = resolve_settings(DNA, benchmark=True, method={"objective": "sepo"})
    record = {"settings": dict(s.values), "sources": dict(s.sources)}
    assert recorded_settings(record) == (dict(s.values), dict(s.sources))
    assert same_settings(record, s)
    assert same_settings(record, resolve_settings(DNA, benchmark=True, method={"objective": "sepo"},
                                                  cli={"checkpoint_frequency": 5}))  # fmt: skip
    assert not same_settings(record, resolve_settings(DNA, method={"objective": "sepo"}))  # another reward
    old = {"seed": 2, "overrides": {"lr": 1e-3}, "config": {"kl_alpha": 1.0, "lr": 3e-4, "num_epochs": 2}}
    values, sources = recorded_settings(old)
    assert (values["seed"], values["lr"], values["kl_alpha"], sources) == (2, 1e-3, 1.0, {})


def test_the_config_holds_exactly_the_resolved_values_and_the_module_gets_them_one_way():
    from sepo_ray.rllib import SEPOConfig

    s = resolve_settings(get_task("toy"), cli={"denoise_steps": 4, "seed": 5, "num_cpus_per_env_runner": 0})
    config = SEPOConfig.from_settings(s)
    assert all(getattr(config, k) == v for k, v in s.values.items())
    config.validate()
    assert config._model_config == {"sepo": {**config.sepo_settings(), "seed": 5}}


def test_show_settings_prints_each_value_and_source_and_starts_nothing(tmp_path, capsys, monkeypatch):
    import ray

    from sepo_ray.cli.run import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("--show-settings started Ray"))
    out = tmp_path / "run"
    assert main(["dna", "--show-settings", "--set", "kl_alpha=0.7", "--seed", "2", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.startswith("kl_alpha ")).split() == [
        "kl_alpha",
        "0.7",
        "--set",
    ]
    assert next(line for line in lines if line.startswith("seed ")).split() == ["seed", "2", "--seed"]
    assert not out.exists()
    # a resumed run shows what it was trained with
    out.mkdir()
    recorded = resolve_settings(DNA, cli={"lr": 1e-4})
    (out / "result.json").write_text(json.dumps({"task": "dna", "settings": dict(recorded.values),
                                                 "sources": dict(recorded.sources), "history": []}))  # fmt: skip
    assert main(["dna", "--show-settings", "--resume", "--output", str(out)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("lr "))
    assert line.split() == ["lr", "0.0001", "--set"]
