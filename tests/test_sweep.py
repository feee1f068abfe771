"""Sweep files, their validation, sweep.json, and whole sweeps (a stand-in trainable, then SEPO itself)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from ray import tune

from sepo_ray import sweeps as sweep
from sepo_ray.cli import sweep as sweep_cli
from sepo_ray.runtime import write_json
from sepo_ray.settings import SETTINGS
from sepo_ray.sweeps import (
    build_param_space,
    load_sweep_spec,
    parse_sweep_spec,
    read_sweep_yaml,
    run_sweep,
    select_best,
    summarize_trial,
    sweep_report,
)

ROOT = Path(__file__).resolve().parents[1]
CPU_FILE = ROOT / "tune_configs" / "cpu_small.yaml"
CLUSTER_FILE = ROOT / "tune_configs" / "cluster_paper.yaml"
TEXT_FILE = ROOT / "tune_configs" / "text_small.yaml"
FIELDS = frozenset(set(SETTINGS) | {"step_cost_s", "marker_dir", "driver_pid", "interrupt_at", "fail_at"})


def minimal(**over) -> dict:
    raw = {
        "name": "t",
        "scheduler": {"type": "asha", "time_attr": "time_total_s", "max_t": 10, "grace_period": 1},
        "num_samples": 2,
        "base_config": {"group_size": 4},
        "search_space": {"clip_eps": {"uniform": [0.1, 0.3]}},
    }
    raw.update(over)
    return raw


# ------------------------------------------------------------------------------------------ shipped files
def test_shipped_sweep_files_validate_against_sepo_config():
    cpu = load_sweep_spec(CPU_FILE)
    cluster = load_sweep_spec(CLUSTER_FILE)
    for spec in (cpu, cluster):
        assert spec.scheduler.type == "asha" and spec.scheduler.time_attr == "time_total_s"
        assert spec.metric == "sepo/reward_mean" and spec.select_metric == "sepo/validation_score"
        assert {"clip_eps", "kl_alpha", "snis_samples", "denoise_steps"} <= set(spec.searched_fields)


def test_cpu_sweep_fits_two_cores_and_fifteen_minutes():
    spec = load_sweep_spec(CPU_FILE)
    assert spec.num_trials >= 4
    assert spec.resources == {"num_cpus": 2, "num_gpus": 0}
    assert 1 <= spec.max_concurrent_trials <= 2
    assert spec.base_config["num_env_runners"] == 0 and spec.base_config.get("num_learners", 0) == 0
    # ASHA's max_t bounds each trial's training time; rounds of max_concurrent trials run back to back.
    rounds = math.ceil(spec.num_trials / spec.max_concurrent_trials)
    assert rounds * spec.scheduler.max_t <= 600
    assert spec.time_budget_s is not None and spec.time_budget_s <= 14 * 60
    # at least two rungs below max_t, so that ASHA can stop a trial early
    assert spec.scheduler.grace_period * spec.scheduler.reduction_factor < spec.scheduler.max_t


def test_cluster_sweep_reaches_paper_scale():
    spec = load_sweep_spec(CLUSTER_FILE)
    values = {p.field: p.args for p in spec.search_space}
    assert max(values["denoise_steps"]) == 128
    assert max(values["snis_samples"]) == 16
    assert spec.base_config["group_size"] == 8
    assert spec.base_config["num_gpus_per_learner"] >= 1 and spec.base_config["num_gpus_per_env_runner"] > 0
    assert spec.base_config["oracle_num_gpus"] > 0


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "raw, culprit",
    [
        (minimal(colour="red"), "'colour'"),
        (minimal(scheduler={"type": "asha", "max_t": 10, "patience": 3}), "'patience'"),
        (minimal(checkpoint={"every": 3}), "'every'"),
        (minimal(resources={"cpus": 2}), "'cpus'"),
        (minimal(base_config={"clip_epsilon": 0.2}), "base_config.clip_epsilon"),
        (minimal(search_space={"temperature": {"uniform": [0.1, 1.0]}}), "search_space.temperature"),
        (minimal(search_space={"clip_eps": {"normal": [0.2, 0.1]}}), "'normal'"),
    ],
)
def test_unknown_key_raises_naming_it(raw, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
        parse_sweep_spec(raw, FIELDS)


@pytest.mark.parametrize(
    "space, culprit",
    [
        ({"clip_eps": {"uniform": [0.3, 0.1]}}, "search_space.clip_eps"),  # low > high
        ({"clip_eps": {"uniform": [0.2, 0.2]}}, "search_space.clip_eps"),  # empty
        ({"clip_eps": {"uniform": [0.1, 1.5]}}, "search_space.clip_eps"),  # the schema: ε in (0, 1)
        ({"kl_alpha": {"loguniform": [0.0, 0.1]}}, "search_space.kl_alpha"),  # log of 0
        ({"lr": {"loguniform": [-1.0e-4, 1.0e-3]}}, "search_space.lr"),
        ({"denoise_steps": {"uniform": [8, 16]}}, "search_space.denoise_steps"),  # integer field
        ({"denoise_steps": {"randint": [0, 16]}}, "search_space.denoise_steps"),  # T >= 1
        ({"snis_samples": {"randint": [4, 2]}}, "search_space.snis_samples"),
        ({"snis_samples": {"choice": [0, -2]}}, "search_space.snis_samples"),
        ({"snis_samples": {"grid": []}}, "search_space.snis_samples"),
        ({"snis_samples": {"choice": [0, 2.5]}}, "search_space.snis_samples"),
        ({"score_estimator": {"choice": ["clean", "exact"]}}, "search_space.score_estimator"),
        ({"lr": {"uniform": [1.0e-4]}}, "search_space.lr"),
        ({"lr": [1.0e-4, 1.0e-3]}, "search_space.lr"),
        ({"group_size": {"grid": [4, 8]}}, "search_space.group_size"),  # also in base_config
    ],
)
def test_invalid_range_raises_naming_the_field(space, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
        parse_sweep_spec(minimal(search_space=space), FIELDS)


@pytest.mark.parametrize(
    "over, culprit",
    [
        ({"scheduler": {"type": "asha", "time_attr": "training_iteration"}}, "scheduler.time_attr"),
        ({"scheduler": {"type": "hyperband"}}, "scheduler.type"),
        ({"scheduler": {"max_t": 10, "grace_period": 20}}, "scheduler.grace_period"),
        ({"scheduler": {"max_t": 0}}, "scheduler.max_t"),
        ({"scheduler": {"reduction_factor": 1}}, "scheduler.reduction_factor"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_concurrent_trials": 3, "resources": {"num_cpus": 2}}, "max_concurrent_trials"),
        ({"mode": "maximise"}, "mode"),
        ({"name": "a b"}, "name"),
        ({"stop": {"training_iteration": -1}}, "stop.training_iteration"),
        ({"base_config": {"clip_eps": 0}}, "base_config.clip_eps"),
        ({"base_config": {"denoise_steps": 8.5}}, "base_config.denoise_steps"),
        ({"checkpoint": {"frequency": -1}}, "checkpoint.frequency"),
    ],
)
def test_invalid_setting_raises_naming_the_key(over, culprit):
    with pytest.raises(ValueError, match=culprit.replace(".", r"\.")):
        parse_sweep_spec(minimal(**over), FIELDS)


@pytest.mark.parametrize(
    "name, bad",
    [
        ("clip_eps", 1.0),
        ("checkpoint_frequency", 0),
        ("group_size", 0),
        ("neighbour_tokens", 0),
        ("oracle_max_restarts", -1),
        ("grad_clip", 0.0),
        ("objective", "ppo"),
        ("zero_clipped", "yes"),
        ("generator", ""),
        ("seed", 1.5),
    ],
)
def test_config_values_follow_the_settings_schema(name, bad):
    """A sweep refuses what the one schema refuses, in the schema's words, naming the key."""
    why = SETTINGS[name].why_invalid(bad)
    assert why is not None
    with pytest.raises(ValueError) as err:
        parse_sweep_spec(minimal(base_config={name: bad}, search_space={}), FIELDS)
    assert str(err.value) == f"base_config.{name}: {name} {why}"
    space = {name: {"choice": [SETTINGS[name].default, bad]}}
    with pytest.raises(ValueError, match=rf"search_space\.{name}\.choice: {name} {re.escape(why)}"):
        parse_sweep_spec(minimal(base_config={}, search_space=space), FIELDS)


def test_every_schema_field_can_be_swept_with_a_space_of_its_kind():
    spec = parse_sweep_spec(
        minimal(
            base_config={
                "neighbour_tokens": 3,
                "oracle_max_restarts": 0,
                "generator": None,
                "grad_clip": None,
            },
            search_space={
                "objective": {"choice": ["sepo", "trajectory"]},
                "zero_clipped": {"grid": [True, False]},
                "group_size": {
                    "grid": [1, 2]
                },  # G = 1 is the schema's; GRPO's G >= 2 is SEPOConfig.validate()'s
            },
        ),
        FIELDS,
    )
    assert spec.num_trials == 2 * 2 * 2
    for space, culprit in [
        ({"zero_clipped": {"randint": [0, 1]}}, "zero_clipped takes true or false; use choice or grid"),
        ({"objective": {"uniform": [0, 1]}}, "objective takes strings; use choice or grid"),
        ({"group_size": {"uniform": [2, 8]}}, "group_size is an integer field"),
    ]:
        with pytest.raises(ValueError, match=culprit):
            parse_sweep_spec(minimal(base_config={}, search_space=space), FIELDS)
    # a misspelt field names the schema's closest one
    with pytest.raises(ValueError, match="did you mean 'clip_eps'"):
        parse_sweep_spec(minimal(search_space={"clip_epsilon": {"uniform": [0.1, 0.3]}}), FIELDS)


def test_missing_name_and_scheduler_are_reported():
    raw = minimal()
    del raw["name"]
    with pytest.raises(ValueError, match="name"):
        parse_sweep_spec(raw, FIELDS)
    raw = minimal()
    del raw["scheduler"]
    with pytest.raises(ValueError, match="scheduler"):
        parse_sweep_spec(raw, FIELDS)


def test_field_names_come_from_sepo_config():
    fields = sweep.sepo_config_fields()
    assert {"clip_eps", "kl_alpha", "snis_samples", "denoise_steps", "lr", "num_epochs"} <= fields
    with pytest.raises(ValueError, match="search_space.not_a_field"):
        parse_sweep_spec(minimal(search_space={"not_a_field": {"choice": [1, 2]}}))


def test_yaml_reads_exponent_floats_and_refuses_duplicate_keys(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(
        "name: t\nscheduler: {max_t: 10}\nsearch_space:\n  lr: {loguniform: [1e-5, 1e-3]}\n", encoding="utf-8"
    )
    spec = load_sweep_spec(good, FIELDS)
    assert spec.search_space[0].args == (1e-5, 1e-3)
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: t\nname: u\nscheduler: {max_t: 10}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate key 'name'"):
        load_sweep_spec(dup, FIELDS)
    with pytest.raises(ValueError, match="does not exist"):
        load_sweep_spec(tmp_path / "missing.yaml", FIELDS)


def test_cli_reports_a_bad_file_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nscheduler: {max_t: 10}\nsearch_space:\n  clip_eps: {uniform: [0.5, 0.1]}\n")
    assert sweep_cli.main([str(bad)]) == 2
    assert "search_space.clip_eps" in capsys.readouterr().err


def test_param_space_domains():
    raw = minimal(
        search_space={
            "clip_eps": {"uniform": [0.1, 0.3]},
            "kl_alpha": {"loguniform": [1.0e-3, 0.1]},
            "snis_samples": {"grid": [0, 2, 4]},
            "denoise_steps": {"choice": [8, 16]},
            "num_epochs": {"randint": [1, 3]},
        }
    )
    spec = parse_sweep_spec(raw, FIELDS)
    assert spec.num_trials == 2 * 3
    space = build_param_space(spec)
    assert space["group_size"] == 4
    assert space["snis_samples"] == {"grid_search": [0, 2, 4]}
    assert isinstance(space["clip_eps"].get_sampler(), tune.search.sample.Float._Uniform)
    assert isinstance(space["kl_alpha"].get_sampler(), tune.search.sample.Float._LogUniform)
    assert space["denoise_steps"].categories == [8, 16]
    # inclusive [1, 3] -> Tune's exclusive upper bound 4
    assert (space["num_epochs"].lower, space["num_epochs"].upper) == (1, 4)


# ---------------------------------------------------------------------------------------- sweep.json rows
def _spec():
    return parse_sweep_spec(
        minimal(scheduler={"max_t": 10, "grace_period": 1}, stop={"training_iteration": 100}), FIELDS
    )


def _hist(n, dt, reward, heldout_every=0, heldout=lambda i: None):
    rows = []
    for i in range(1, n + 1):
        row = {"training_iteration": i, "time_total_s": i * dt, "sepo/reward_mean": reward(i)}
        if heldout_every and i % heldout_every == 0:
            row["sepo/validation_score"] = heldout(i)
        elif heldout_every:
            row["sepo/validation_score"] = float("nan")  # how a dataframe fills the gaps
        rows.append(row)
    return rows


def test_summaries_handle_sparse_heldout_and_early_stops(tmp_path):
    spec = _spec()
    records = [
        # ran to max_t; held-out every 2nd iteration
        {"trial_id": "a", "status": "TERMINATED", "config": {"clip_eps": 0.2},
         "history": _hist(10, 1.0, lambda i: 0.1 * i, 2, lambda i: 1.0 + i / 10)},
        # stopped by ASHA at its 4 s rung with a (noisy) higher held-out value: finished trials are preferred
        {"trial_id": "b", "status": "TERMINATED", "config": {"clip_eps": 0.1},
         "history": _hist(4, 1.0, lambda i: 0.01 * i, 2, lambda i: 5.0)},
        # never reported the held-out metric
        {"trial_id": "c", "status": "TERMINATED", "config": {"clip_eps": 0.3},
         "history": _hist(10, 1.0, lambda i: 0.5 * i)},
        {"trial_id": "d", "status": "ERROR", "config": {"clip_eps": 0.25},
         "history": _hist(2, 1.0, lambda i: 9.0), "error": "RuntimeError: boom"},
        {"trial_id": "e", "status": "TERMINATED", "config": {"clip_eps": 0.15}, "history": []},
    ]  # fmt: skip
    rows = {r["trial_id"]: summarize_trial(r, spec) for r in records}
    held = "sepo/validation_score"
    assert rows["a"]["metrics"][held] == {"last": 2.0, "best": 2.0, "num_reports": 5}
    assert rows["a"]["metrics"]["sepo/reward_mean"]["last"] == pytest.approx(1.0)
    assert not rows["a"]["stopped_early"]
    assert rows["b"]["stopped_early"] and rows["b"]["metrics"][held]["last"] == 5.0
    assert rows["c"]["metrics"][held] == {"last": None, "best": None, "num_reports": 0}
    assert not rows["d"]["stopped_early"] and rows["d"]["error"] == "RuntimeError: boom"
    assert not rows["e"]["stopped_early"]

    report = sweep_report(spec, records, "/x/t")
    assert report["num_trials"] == 5 and report["num_errored"] == 1 and report["num_stopped_early"] == 1
    best = report["best"]
    assert best["trial_id"] == "a" and best["selected_by"] == held and best["value"] == 2.0
    assert best["config"] == {"clip_eps": 0.2}
    assert best["sepo_config"] == {"group_size": 4, "clip_eps": 0.2}

    path = write_json(tmp_path / "out" / "sweep.json", report)
    loaded = json.loads(path.read_text())  # strict JSON: NaN became null
    assert loaded == json.loads(json.dumps(report))
    assert [t["trial_id"] for t in loaded["trials"]] == ["a", "b", "c", "d", "e"]
    assert "a" in sweep.format_report(report)


def test_best_falls_back_to_reward_when_nothing_reported_heldout():
    spec = _spec()
    records = [
        {"trial_id": "a", "status": "TERMINATED", "config": {}, "history": _hist(10, 1.0, lambda i: 1.0)},
        {"trial_id": "b", "status": "TERMINATED", "config": {}, "history": _hist(10, 1.0, lambda i: 2.0)},
    ]
    rows = [summarize_trial(r, spec) for r in records]
    best = select_best(rows, spec)
    assert best["trial_id"] == "b" and best["selected_by"] == "sepo/reward_mean"
    assert select_best([], spec) is None


def test_select_min_guards_keep_reward_hackers_out():
    real = "sepo/validation_realism"
    spec = parse_sweep_spec(
        minimal(scheduler={"max_t": 10, "grace_period": 1}, select_min={real: 0.8}), FIELDS
    )
    assert spec.select_min == {real: 0.8} and f"{real} >= 0.8" in spec.describe()

    def record(tid, heldout, realism):
        hist = _hist(10, 1.0, lambda i: 1.0, 5, lambda i: heldout)
        for row in hist:
            row[real] = realism if row["training_iteration"] % 5 == 0 else float("nan")
        return {"trial_id": tid, "status": "TERMINATED", "config": {"clip_eps": 0.1}, "history": hist}

    # "hack" has the best held-out oracle score but its sequences stopped looking like DNA
    records = [record("hack", 3.0, 0.1), record("good", 1.0, 0.9), record("edge", 0.5, 0.8)]
    records.append({"trial_id": "blind", "status": "TERMINATED", "config": {},
                    "history": _hist(10, 1.0, lambda i: 9.0)})  # fmt: skip
    rows = {r["trial_id"]: summarize_trial(r, spec) for r in records}
    assert rows["hack"]["meets_select_min"] is False and rows["good"]["meets_select_min"] is True
    assert rows["edge"]["meets_select_min"] is True  # the bound is inclusive
    assert rows["blind"]["meets_select_min"] is None  # never reported the guard: not eligible
    assert rows["hack"]["metrics"][real] == {"last": 0.1, "best": 0.1, "num_reports": 2}
    report = sweep_report(spec, records)
    assert report["best"]["trial_id"] == "good" and report["num_below_select_min"] == 1
    assert report["num_unchecked_select_min"] == 1
    text = sweep.format_report(report)
    assert "[below select_min]" in text and "validation_realism=0.1" in text
    assert "[select_min metric not reported]" in text
    # without the guard the oracle-fooling trial wins
    assert sweep_report(_spec(), records)["best"]["trial_id"] == "hack"
    # nobody passes: no best config, and the message says why
    strict = parse_sweep_spec(
        minimal(scheduler={"max_t": 10, "grace_period": 1}, select_min={real: 0.95}), FIELDS
    )
    report = sweep_report(strict, records)
    assert report["best"] is None and "No trial met select_min" in sweep.format_report(report)


@pytest.mark.parametrize("bad", [0.8, ["sepo/x"], {"sepo/x": "high"}])
def test_select_min_must_map_metrics_to_numbers(bad):
    with pytest.raises(ValueError, match="select_min"):
        parse_sweep_spec(minimal(select_min=bad), FIELDS)


# --------------------------------------------------------------------------------- a whole sweep (stand-in)
class StandInSEPO(tune.Trainable):
    """A trainable with SEPO's result layout: reward grows by clip_eps per iteration, held-out every 2nd.

    An iteration costs ``step_cost_s``. Once per sweep (a marker file records it) the trial whose clip_eps
    equals ``interrupt_at`` interrupts the driver at iteration 3, as Ctrl-C would, and the one whose
    clip_eps equals ``fail_at`` fails there, as a lost worker would: the sweep stops part-way and resumes.
    """

    def setup(self, config):
        assert config.get("env_class", Path) is Path  # a class in the config reaches the trial
        self.reward = 0.0
        self.clip = config["clip_eps"]
        self.cost = config.get("step_cost_s", 0.02)
        self.config_ = config

    def _once(self, what: str) -> bool:
        marker = self.config_.get("marker_dir") and Path(self.config_["marker_dir"], what)
        if marker and self.config_.get(f"{what}_at") == self.clip and not marker.exists():
            marker.write_text(what)
            return True
        return False

    def step(self):
        time.sleep(self.cost)
        self.reward += self.clip
        i = self.iteration + 1
        if i == 3 and self._once("interrupt"):
            os.kill(self.config_["driver_pid"], signal.SIGINT)
            time.sleep(1.0)
        if i == 3 and self._once("fail"):
            raise RuntimeError("simulated lost worker")
        out = {"sepo": {"reward_mean": self.reward, "kl": 0.01}, "num_env_steps_sampled_lifetime": 8 * i}
        if i % 2 == 0:
            out["sepo"]["validation_score"] = self.reward / 2
        return out

    def save_checkpoint(self, checkpoint_dir):
        Path(checkpoint_dir, "state.json").write_text(json.dumps({"reward": self.reward}))

    def load_checkpoint(self, checkpoint_dir):
        self.reward = json.loads(Path(checkpoint_dir, "state.json").read_text())["reward"]


class StandInConfig:
    """Like SEPOConfig: ``update_from_dict`` then ``to_dict`` adds non-primitive values (a class)."""

    def update_from_dict(self, values):
        self.values = dict(values)
        return self

    def to_dict(self):
        return {**self.values, "env_class": Path}


def _stand_in_spec(**over):
    raw = {
        "name": "stand_in",
        "scheduler": {"type": "asha", "time_attr": "time_total_s", "max_t": 0.8, "grace_period": 0.2,
                      "reduction_factor": 2},
        "num_samples": 1,
        "max_concurrent_trials": 1,
        "checkpoint": {"frequency": 0, "at_end": False},
        "base_config": {"step_cost_s": 0.05},
        "search_space": {"clip_eps": {"grid": [0.3, 0.1, 0.2, 0.05]}},
    }  # fmt: skip
    raw.update(over)
    return parse_sweep_spec(raw, FIELDS)


@pytest.mark.parametrize(
    "clock, max_t, grace", [("time_total_s", 0.8, 0.2), ("num_env_steps_sampled_lifetime", 128, 32)]
)
def test_sweep_runs_asha_on_its_clock_and_writes_sweep_json(
    ray_session, tmp_path, capsys, clock, max_t, grace
):
    scheduler = {
        "type": "asha",
        "time_attr": clock,
        "max_t": max_t,
        "grace_period": grace,
        "reduction_factor": 2,
    }
    spec = _stand_in_spec(scheduler=scheduler)
    report = run_sweep(spec, tmp_path / "out", trainable=StandInSEPO, verbose=1)
    data = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert data == report
    assert data["num_trials"] == 4 and data["num_terminated"] == 4
    assert data["num_stopped_early"] >= 1  # 0.05 and 0.1 fall below the running median
    assert data["best"]["config"] == {"clip_eps": 0.3}
    assert data["best"]["selected_by"] == "sepo/validation_score"
    for row in data["trials"]:
        assert row["metrics"][clock] >= spec.scheduler.grace_period
        assert row["stopped_early"] == (row["metrics"][clock] < spec.scheduler.max_t)
    out = capsys.readouterr().out
    assert "Best config by sepo/validation_score" in out and "clip_eps" in out
    # a second run into the same directory must not silently mix two experiments
    with pytest.raises(ValueError, match="--resume"):
        run_sweep(spec, tmp_path / "out", trainable=StandInSEPO, verbose=0)


def test_sweep_stopped_part_way_resumes(ray_session, tmp_path):
    base = {"step_cost_s": 0.03, "marker_dir": str(tmp_path), "driver_pid": os.getpid()}
    spec = _stand_in_spec(
        name="resume",
        checkpoint={"frequency": 2, "num_to_keep": 2, "at_end": True},
        base_config={**base, "interrupt_at": 0.2, "fail_at": 0.3},
        search_space={"clip_eps": {"grid": [0.2, 0.3, 0.1]}},
        scheduler={"type": "asha", "max_t": 0.3, "grace_period": 0.3},
    )
    out = tmp_path / "out"
    kwargs = {"trainable": StandInSEPO, "config_cls": StandInConfig, "verbose": 0}
    with pytest.raises(ValueError, match="no Tune experiment"):
        run_sweep(spec, out, resume=True, **kwargs)
    # Ctrl-C (a real SIGINT) during the first trial: it is cut, the later trials do not exist yet
    first = run_sweep(spec, out, sweep_file="resume.yaml", **kwargs)
    assert (tmp_path / "interrupt").exists() and first["num_terminated"] < 3
    assert first["interrupted"] and first["num_interrupted"] >= 1
    assert first["num_interrupted"] + first["num_not_started"] + first["num_terminated"] == 3
    command = f"python -m sepo_ray.sweep resume.yaml --output {out.resolve()} --resume"
    assert first["resume_command"] == command
    cut = [t for t in first["trials"] if t["status"] == "interrupted"]
    assert cut and all(t["resume_hint"].startswith(command) for t in cut)
    # resumed: the first trial continues, the others are created (their config holds a class), one fails
    second = run_sweep(spec, out, resume=True, **kwargs)
    assert second["num_trials"] == 3 and second["num_errored"] == 1 and not second["interrupted"]
    # resumed again: the failed trial continues from its checkpoint
    third = run_sweep(spec, out, resume=True, **kwargs)
    assert third["num_trials"] == 3 and third["num_terminated"] == 3
    assert {t["trial_id"] for t in third["trials"]} == {t["trial_id"] for t in second["trials"]}
    assert third["best"]["config"] == {"clip_eps": 0.3}


# ------------------------------------------------------------------------------------- a whole SEPO sweep
def test_four_trial_cpu_sweep_of_sepo(ray_session, tmp_path):
    if importlib.util.find_spec("sepo_ray.rllib") is None:
        pytest.skip("sepo_ray.rllib is not available")
    raw = copy.deepcopy(read_sweep_yaml(CPU_FILE))
    raw.update(
        name="cpu_tiny",
        num_samples=4,
        max_failures=0,
        max_concurrent_trials=2,
        time_budget_s=150,
        checkpoint={"frequency": 0, "num_to_keep": 1, "at_end": False},
        scheduler={"type": "asha", "time_attr": "time_total_s", "max_t": 8, "grace_period": 2,
                   "reduction_factor": 2},
    )  # fmt: skip
    raw["base_config"].update(prompts_per_batch=2, group_size=2, validation_interval=2, validation_samples=8)
    raw["search_space"]["denoise_steps"] = {"choice": [4, 8]}
    raw["select_min"] = {"sepo/validation_realism": -1.0}  # 8 samples: too few for the shipped bound
    spec = parse_sweep_spec(raw)
    report = run_sweep(spec, tmp_path / "out", verbose=1)
    assert (tmp_path / "out" / "sweep.json").is_file()
    errors = [t["error"] for t in report["trials"] if t["error"]]
    assert report["num_trials"] == 4 and report["num_errored"] == 0, errors
    assert report["best"] is not None
    assert set(report["best"]["config"]) == set(spec.searched_fields)
    # the realism score is reported with every held-out evaluation, on the same samples
    for t in report["trials"]:
        held, real = t["metrics"]["sepo/validation_score"], t["metrics"]["sepo/validation_realism"]
        assert real["num_reports"] == held["num_reports"]
        assert t["meets_select_min"] is (True if held["num_reports"] else None)
        if real["last"] is not None:
            assert -1.0 <= real["last"] <= 1.0
    assert any(t["metrics"]["sepo/validation_realism"]["num_reports"] for t in report["trials"])
    # the validation samples are oracle calls, kept in the history and charged to the tuning with the training calls
    from sepo_ray.experiment.tuning import TUNE_CLOCK, charged_calls

    for t in report["trials"]:
        assert (
            t["metrics"]["sepo/validation_calls"] == 8 * t["metrics"]["sepo/validation_score"]["num_reports"]
        )
    assert (
        charged_calls(report)
        == sum(t["metrics"][TUNE_CLOCK] + t["metrics"]["sepo/validation_calls"] for t in report["trials"])
        > sum(t["metrics"][TUNE_CLOCK] for t in report["trials"])
    )
    # every trial writes the curves a run writes: the same tags against the oracle calls spent
    from tests.test_curves import read_scalars

    folders = sorted((tmp_path / "out" / "cpu_tiny").glob("*/curves"))
    assert len(folders) == 4
    scalars = read_scalars(folders[0])
    assert {"sepo/reward_mean", "sepo/kl", "calls/oracle_calls"} <= set(scalars)
    assert [step for step, _ in scalars["calls/oracle_calls"]] == [
        v for _, v in scalars["calls/oracle_calls"]
    ]


def test_values_sepo_config_refuses_stop_the_sweep_before_it_starts(tmp_path):
    from sepo_ray.rllib import SEPO, SEPOConfig

    raw = copy.deepcopy(read_sweep_yaml(CPU_FILE))
    raw["base_config"]["kl_steps"] = 4
    raw["search_space"]["denoise_steps"] = {"choice": [2, 8]}  # T = 2 < kl_steps
    spec = parse_sweep_spec(raw)
    with pytest.raises(sweep.SweepError, match=r"search_space\.denoise_steps=2: .*kl_steps"):
        run_sweep(spec, tmp_path / "out", trainable=SEPO, config_cls=SEPOConfig)
    raw = copy.deepcopy(read_sweep_yaml(CPU_FILE))
    del raw["base_config"]["group_size"]
    raw["search_space"]["group_size"] = {"choice": [1, 4]}  # the schema allows G = 1, GRPO does not
    with pytest.raises(sweep.SweepError, match=r"search_space\.group_size=1: .*GRPO"):
        run_sweep(parse_sweep_spec(raw), tmp_path / "out", trainable=SEPO, config_cls=SEPOConfig)
    assert not (tmp_path / "out").exists()
    for path in (CPU_FILE, CLUSTER_FILE):
        sweep.check_against_config(load_sweep_spec(path), SEPOConfig)


# ------------------------------------------------------------------------- checks before anything starts
def _write_sweep(tmp_path, raw, name="sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _no_ray(monkeypatch, cuda_devices=0):
    """A dry run in a fresh process: Ray not started, no RAY_ADDRESS, ``cuda_devices`` local GPUs."""
    import ray
    import torch

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)


@pytest.mark.parametrize(
    "where, reward, message",
    [
        ("base_config", "nosuch:f", "base_config.reward: reward 'nosuch:f': cannot import module 'nosuch'"),
        ("search_space", {"choice": ["dna_ft", "nosuch"]},
         "search_space.reward: reward 'nosuch' is not a registered oracle name"),
    ],
)  # fmt: skip
def test_dry_run_checks_every_reward_spec(tmp_path, monkeypatch, capsys, where, reward, message):
    _no_ray(monkeypatch)
    raw = copy.deepcopy(read_sweep_yaml(CPU_FILE))
    raw["base_config"].pop("reward")  # the file names the benchmark's reward; a field lives in one place
    raw[where]["reward"] = reward
    assert sweep_cli.main([str(_write_sweep(tmp_path, raw)), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = "\n".join(
        line for line in err if "WARNING algorithm_config.py" not in line
    )  # RLlib's once-a-process notice
    assert err.startswith(f"error: {message}") and "\n" not in err
    # a real run stops at the same check, before Ray or Tune start
    with pytest.raises(sweep.SweepError, match=re.escape(message)):
        run_sweep(parse_sweep_spec(raw), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dry_run_of_the_shipped_cpu_sweep_passes(tmp_path, monkeypatch, capsys):
    _no_ray(monkeypatch)
    assert sweep_cli.main([str(CPU_FILE), "--dry-run"]) == 0
    assert "GPUs: a trial asks for at most 0; resources.num_gpus is 0" in capsys.readouterr().out


def test_text_sweep_file_parses_fits_two_cores_and_passes_its_dry_run(monkeypatch, capsys):
    from sepo_ray.rllib import SEPOConfig

    spec = load_sweep_spec(TEXT_FILE)
    sweep.check_against_config(spec, SEPOConfig)
    assert spec.base_config["task"] == "text" and set(spec.searched_fields) == {"kl_alpha", "lr"}
    assert spec.select_metric == "sepo/validation_score" and "sepo/validation_realism" in spec.select_min
    assert spec.resources == {"num_cpus": 2, "num_gpus": 0} and spec.max_concurrent_trials <= 2
    rounds = math.ceil(spec.num_trials / spec.max_concurrent_trials)
    assert rounds * spec.scheduler.max_t <= 600 and spec.time_budget_s <= 15 * 60
    _no_ray(monkeypatch)
    assert sweep_cli.main([str(TEXT_FILE), "--dry-run"]) == 0
    assert "searching kl_alpha, lr" in capsys.readouterr().out


def test_every_trial_starts_from_the_tasks_run_defaults_then_the_sweep_file():
    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.sweeps.space import build_param_space
    from sepo_ray.tasks import get_task

    text = build_param_space(load_sweep_spec(TEXT_FILE), SEPOConfig)
    assert text["objective"] == get_task("text").default_settings["objective"] == "sepo_t"
    assert text["group_size"] == 4 and text["prompts_per_batch"] == 4  # the file's own values win
    dna = build_param_space(load_sweep_spec(CPU_FILE), SEPOConfig)
    assert dna["objective"] == "sepo" != get_task("dna").default_settings["objective"]  # named in the file


def test_dry_run_refuses_a_trial_that_needs_more_gpus_than_there_are(tmp_path, monkeypatch, capsys):
    raw = copy.deepcopy(read_sweep_yaml(CLUSTER_FILE))  # 4 GPUs a trial
    # no resources block: the local machine's CUDA devices
    _no_ray(monkeypatch, cuda_devices=2)
    assert sweep_cli.main([str(_write_sweep(tmp_path, raw)), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: base_config: a trial asks for 4 GPUs but this machine has 2 (torch.cuda.device_count()); it "
        "could never be placed and Tune would wait for it forever. Lower num_gpus_per_learner, "
        "num_gpus_per_env_runner or oracle_num_gpus, or add GPUs"
    )
    _no_ray(monkeypatch, cuda_devices=8)
    assert sweep_cli.main([str(_write_sweep(tmp_path, raw)), "--dry-run"]) == 0
    assert "GPUs: a trial asks for at most 4; this machine has 8" in capsys.readouterr().out
    # resources.num_gpus sizes a local Ray; a searched value is checked too, and named
    raw["resources"] = {"num_gpus": 5}
    del raw["base_config"]["num_gpus_per_learner"]
    raw["search_space"]["num_gpus_per_learner"] = {"choice": [1, 3]}
    assert sweep_cli.main([str(_write_sweep(tmp_path, raw)), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: search_space.num_gpus_per_learner=3: a trial asks for 6 GPUs but resources.num_gpus is 5;"
    )


def test_cluster_gpus_count_what_the_autoscaler_can_add(ray_session, monkeypatch):
    from ray._private.state import state

    from sepo_ray.sweeps.preflight import cluster_gpus

    assert cluster_gpus() == (0.0, "the Ray cluster has 0 (ray.cluster_resources())")
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"GPU": 16, "CPU": 200})
    assert cluster_gpus() == (16.0, "the Ray cluster has 0 now and its autoscaler can reach 16")


class GPUHungry(StandInSEPO):
    """The stand-in, asking for ``num_gpus_per_learner`` GPUs a trial as RLlib's bundles would."""

    @classmethod
    def default_resource_request(cls, config):
        from ray.tune.execution.placement_groups import PlacementGroupFactory

        return PlacementGroupFactory([{"CPU": 1, "GPU": config.get("num_gpus_per_learner", 0)}])


def test_run_refuses_a_trial_the_cluster_cannot_place_before_tune_starts(ray_session, tmp_path):
    raw = {
        "name": "hungry",
        "scheduler": {"type": "asha", "max_t": 1, "grace_period": 1},
        "search_space": {"num_gpus_per_learner": {"choice": [0, 2]}, "clip_eps": {"grid": [0.1, 0.2]}},
    }
    spec = parse_sweep_spec(raw, FIELDS | {"num_gpus_per_learner"})
    message = "search_space.num_gpus_per_learner=2: a trial asks for 2 GPUs but the Ray cluster has 0"
    with pytest.raises(sweep.SweepError, match=re.escape(message)):
        run_sweep(spec, tmp_path / "out", trainable=GPUHungry, config_cls=StandInConfig, verbose=0)
    assert not (tmp_path / "out").exists()  # Tune never started


# ----------------------------------------------------------------------------------------------- Ctrl-C
class CtrlCAt(tune.CLIReporter):
    """Tune's table reporter that presses Ctrl-C once while ``armed``, as the keyboard would (it calls the
    process's SIGINT handler, in the driver's loop, without a signal), as soon as a trial has reported ``at``
    iterations. ``armed`` is the class's: a restored sweep gets the reporter back from Tune's saved state."""

    armed = False

    def __init__(self, at: int):
        super().__init__(max_report_frequency=3600)
        self.at = at

    def should_report(self, trials, done=False):
        if CtrlCAt.armed and any(t.last_result.get("training_iteration", 0) >= self.at for t in trials):
            CtrlCAt.armed = False
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        return False


def test_ctrl_c_marks_cut_trials_prints_the_resume_command_and_exits_130(
    ray_session, tmp_path, monkeypatch, capsys
):
    from sepo_ray.sweeps import runner

    raw = {
        "name": "ctrl_c",
        "scheduler": {"type": "asha", "time_attr": "time_total_s", "max_t": 0.4, "grace_period": 0.4},
        "max_concurrent_trials": 1,
        "checkpoint": {"frequency": 1, "at_end": True},
        "base_config": {"step_cost_s": 0.05},
        "search_space": {"clip_eps": {"grid": [0.1, 0.3, 0.2]}},
    }
    path, out = _write_sweep(tmp_path, raw), tmp_path / "out"
    monkeypatch.setattr(sweep_cli, "load_sweep_spec", lambda p: load_sweep_spec(p, FIELDS))
    monkeypatch.setattr(runner, "default_trainable", lambda: (StandInSEPO, StandInConfig))
    monkeypatch.setattr(runner, "progress_reporter", lambda spec: CtrlCAt(2))
    monkeypatch.setattr(CtrlCAt, "armed", True)
    handler = signal.getsignal(signal.SIGINT)
    assert sweep_cli.main([str(path), "--output", str(out)]) == 130
    assert signal.getsignal(signal.SIGINT) is handler  # ours and Tune's are gone
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ

    command = f"python -m sepo_ray.sweep {path} --output {out.resolve()} --resume"
    data = json.loads((out / "sweep.json").read_text())
    assert data["interrupted"] and data["resume_command"] == command
    # one trial at a time: the first is cut at its 2nd report, the other two were never created
    assert (data["num_trials"], data["num_interrupted"], data["num_not_started"]) == (1, 1, 2)
    (row,) = data["trials"]
    assert row["status"] == "interrupted" and row["metrics"]["training_iteration"] >= 2
    assert row["resume_hint"] == f"{command}  # continues from its last checkpoint"
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"Sweep interrupted: 1 trial cut, 2 not started; continue with: {command}"

    # what Tune saved is what a second Ctrl-C (no graceful stop) leaves: the trial there is still RUNNING
    spec = load_sweep_spec(path, FIELDS)
    saved = runner._saved_trial_records(str(out.resolve() / "ctrl_c"), spec)
    assert [r["status"] for r in runner.mark_interrupted(saved, command)] == ["interrupted"]

    # the printed command continues it: the cut trial resumes, the others are created
    assert not CtrlCAt.armed
    assert sweep_cli.main([str(path), "--output", str(out), "--resume"]) == 0
    data = json.loads((out / "sweep.json").read_text())
    assert not data["interrupted"] and data["num_trials"] == data["num_terminated"] == 3
    assert {t["resume_hint"] for t in data["trials"]} == {None}
    assert data["best"]["config"] == {"clip_eps": 0.3}


def test_keyboard_interrupt_out_of_fit_still_writes_sweep_json(ray_session, tmp_path, monkeypatch, capsys):
    """A second Ctrl-C (or TUNE_DISABLE_SIGINT_HANDLER=1) raises out of ``fit``: no ResultGrid, the report
    comes from what Tune last saved (here nothing) and counts every trial as not started."""
    from sepo_ray.sweeps import runner

    class Interrupted:
        def fit(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_make_tuner", lambda *args: Interrupted())
    spec = _stand_in_spec(name="keyboard")
    report = run_sweep(spec, tmp_path / "out", trainable=StandInSEPO, verbose=0, sweep_file="s.yaml")
    command = f"python -m sepo_ray.sweep s.yaml --output {(tmp_path / 'out').resolve()} --resume"
    assert report == json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert report["interrupted"] and report["resume_command"] == command
    assert (report["num_trials"], report["num_interrupted"], report["num_not_started"]) == (0, 0, 4)
    assert capsys.readouterr().out.strip().endswith(f"0 trials cut, 4 not started; continue with: {command}")


def test_ctrl_c_handler_hands_the_first_press_to_tune_and_raises_on_the_second(monkeypatch):
    from sepo_ray.sweeps.runner import CtrlC

    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)
    stops = []
    with CtrlC() as ctrl_c:
        assert signal.getsignal(signal.SIGINT) is ctrl_c
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # Tune leaves SIGINT to us
        signal.signal(signal.SIGUSR1, lambda signum, frame: stops.append(signum))  # what Tune.fit installs
        ctrl_c(signal.SIGINT, None)
        assert stops == [signal.SIGINT] and ctrl_c.interrupted
        with pytest.raises(KeyboardInterrupt):
            ctrl_c(signal.SIGINT, None)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGUSR1)) == before
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
    # before Tune's handler is in place (or with Tune's handling disabled) the first press stops at once
    with CtrlC() as ctrl_c, pytest.raises(KeyboardInterrupt):
        ctrl_c(signal.SIGINT, None)
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    with CtrlC() as ctrl_c:
        signal.signal(signal.SIGUSR1, lambda signum, frame: stops.append(signum))
        with pytest.raises(KeyboardInterrupt):
            ctrl_c(signal.SIGINT, None)
    assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1" and len(stops) == 1
