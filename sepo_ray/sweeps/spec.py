"""The sweep file: its keys, :class:`SweepSpec`, and the parsing that checks every key before a trial starts.

    name: cpu_small                    # experiment name: DIR/<name> holds Tune's experiment
    description: ...                   # free text (optional)
    metric: sepo/reward_mean           # what the scheduler compares (fine-tuning reward)
    mode: max                          # max | min
    select_metric: sepo/validation_score  # what picks the best config (the task's held-out oracle)
    select_mode: max
    select_min: {sepo/validation_realism: 0.8}  # realism guards: a trial below any is never picked (optional)
    scheduler:                         # ASHA (async successive halving)
      type: asha
      time_attr: time_total_s          # seconds of training (fair when T and M change an iteration's cost),
                                       # or num_env_steps_sampled_lifetime: fine-tuning oracle calls
      max_t: 60                        # a trial stops after this many time_attr units
      grace_period: 15                 # no trial is stopped before this
      reduction_factor: 2              # keep the top 1/rf at each rung
      brackets: 1
    num_samples: 8                     # samples of the random space (times the grid product)
    max_concurrent_trials: 2
    search_seed: 0                     # seed of the random search (optional)
    time_budget_s: 780                 # whole-sweep wall-clock guard (optional)
    resources: {num_cpus: 2, num_gpus: 0}  # Ray started locally when not joining a cluster (optional)
    stop: {training_iteration: 200}    # Tune stop criteria: metric -> threshold (optional)
    checkpoint: {frequency: 5, num_to_keep: 1, at_end: true}  # trial checkpoints (resume points)
    max_failures: 0                    # retries of a failed trial (from its last checkpoint)
    storage_path: null                 # Tune storage (s3://..., gs://..., NFS) on multi-node clusters
    base_config: {denoise_steps: 16, ...}   # SEPOConfig fields held fixed
    search_space:                      # SEPOConfig field -> {kind: args}
      clip_eps: {uniform: [0.1, 0.3]}
      kl_alpha: {loguniform: [1.0e-3, 1.0e-1]}
      snis_samples: {choice: [0, 2]}
      denoise_steps: {grid: [8, 16]}
      num_epochs: {randint: [1, 3]}    # integer bounds are inclusive at both ends

Search kinds: ``grid`` (every value, multiplies the trial count), ``choice`` (one value, uniformly),
``uniform`` / ``loguniform`` ``[low, high]`` (floats; low < high, log needs low > 0), ``randint`` /
``lograndint`` ``[low, high]`` (integers, inclusive). Integer fields (T, M, K epochs, ...) refuse float spaces;
string and boolean fields take ``choice`` or ``grid``.

The sweep's own scalar keys are :class:`sepo_ray.settings.Setting` rows (:data:`FILE_SETTINGS`); ``base_config``
and ``search_space`` are the settings ``run --set`` takes, resolved and checked by :mod:`sepo_ray.resolve` (the
``file`` layer), cross-field rules included, before any trial starts.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sepo_ray.settings import SETTINGS, Setting, check
from sepo_ray.yamlio import yaml_load

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "lograndint")
SCHEDULERS = ("asha",)
# Cost-fair progress measures: T denoising steps and M SNIS samples change what one iteration costs,
# so iterations are not comparable across trials (training_iteration is refused on purpose). The clock is
# the seconds a trial has trained, or the sequences it has sampled: one fine-tuning-oracle call each, the
# cost a budget of oracle calls counts (and a clock that machine load does not change).
TIME_ATTRS = ("time_total_s", "num_env_steps_sampled_lifetime")
#: each clock's column title in the progress table
CLOCK_TITLES = {"time_total_s": "time (s)", "num_env_steps_sampled_lifetime": "calls"}

DEFAULT_METRIC = "sepo/reward_mean"
DEFAULT_SELECT_METRIC = "sepo/validation_score"

#: The sweep file's own scalar keys (a block's keys as ``block.key``), with the schema's ``Setting`` rules.
# fmt: off
FILE_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("name", None, "str", "experiment name: letters, digits, '_', '.', '-' (names a directory)"),
        Setting("metric", DEFAULT_METRIC, "str", "what the scheduler compares"),
        Setting("mode", "max", "str", "direction of metric", choices=("max", "min")),
        Setting("select_metric", DEFAULT_SELECT_METRIC, "str", "what picks the best config"),
        Setting("select_mode", "max", "str", "direction of select_metric", choices=("max", "min")),
        Setting("num_samples", 1, "int", "samples of the random space (times the grid product)", low=1),
        Setting("max_concurrent_trials", 1, "int", "trials running at once", low=1),
        Setting("search_seed", None, "int", "seed of the random search", low=0, nullable=True),
        Setting("time_budget_s", None, "float", "whole-sweep wall-clock guard", "s", low=0, low_open=True, nullable=True),
        Setting("max_failures", 0, "int", "retries of a failed trial; -1 = forever", low=-1),
        Setting("storage_path", None, "str", "Tune storage (s3://, gs://, a shared mount)", nullable=True),
        Setting("scheduler.type", "asha", "str", "the trial scheduler", choices=SCHEDULERS),
        Setting("scheduler.time_attr", "time_total_s", "str", "the scheduler's clock", choices=TIME_ATTRS),
        Setting("scheduler.max_t", 60.0, "float", "no trial trains past this", "time_attr units", low=0, low_open=True),
        Setting("scheduler.grace_period", 10.0, "float", "no trial stops before this", "time_attr units", low=0, low_open=True),
        Setting("scheduler.reduction_factor", 2.0, "float", "keep the top 1/rf at each rung", low=1, low_open=True),
        Setting("scheduler.brackets", 1, "int", "ASHA brackets", low=1),
        Setting("resources.num_cpus", None, "int", "CPUs of a locally started Ray", low=1, nullable=True),
        Setting("resources.num_gpus", None, "int", "GPUs of a locally started Ray", low=0, nullable=True),
        Setting("checkpoint.frequency", 0, "int", "iterations between trial checkpoints; 0 = none", low=0),
        Setting("checkpoint.num_to_keep", 1, "int", "trial checkpoints kept; null = all", low=1, nullable=True),
        Setting("checkpoint.at_end", True, "bool", "checkpoint every trial when it ends"),
    )
}
# fmt: on

# the keys of the file and of its blocks: the scalar ones above, and the mappings
TOP_LEVEL_KEYS = frozenset(
    {n.partition(".")[0] for n in FILE_SETTINGS}
    | {"description", "select_min", "stop", "base_config", "search_space"}
)
SCHEDULER_KEYS, RESOURCES_KEYS, CHECKPOINT_KEYS = (
    frozenset(n.partition(".")[2] for n in FILE_SETTINGS if n.startswith(f"{block}."))
    for block in ("scheduler", "resources", "checkpoint")
)

# rules of the values inside the sweep's mappings (select_min, stop) and of search-range ends
_METRIC_NAME = Setting("key", None, "str", "a reported metric name")
_NUMBER = Setting("number", None, "float", "a finite number")
_INTEGER = Setting("integer", None, "int", "an integer")
_POSITIVE = Setting("threshold", None, "float", "a positive threshold", low=0, low_open=True)


def _d(name: str) -> Any:
    return FILE_SETTINGS[name].default


class SweepError(ValueError):
    """A sweep that cannot start as asked (nothing to resume, or an existing sweep in the way)."""


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA settings; ``max_t`` and ``grace_period`` are in units of ``time_attr`` (seconds or oracle calls)."""

    type: str = _d("scheduler.type")
    time_attr: str = _d("scheduler.time_attr")
    max_t: float = _d("scheduler.max_t")
    grace_period: float = _d("scheduler.grace_period")
    reduction_factor: float = _d("scheduler.reduction_factor")
    brackets: int = _d("scheduler.brackets")


@dataclass(frozen=True)
class Param:
    """One searched field: ``kind`` in SPACE_KINDS and its arguments (values, or [low, high])."""

    field: str
    kind: str
    args: tuple


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file (see the module docstring for every key)."""

    name: str
    scheduler: SchedulerSpec
    base_config: dict
    search_space: tuple[Param, ...]
    description: str = ""
    metric: str = _d("metric")
    mode: str = _d("mode")
    select_metric: str = _d("select_metric")
    select_mode: str = _d("select_mode")
    select_min: dict = field(default_factory=dict)
    num_samples: int = _d("num_samples")
    max_concurrent_trials: int = _d("max_concurrent_trials")
    search_seed: int | None = _d("search_seed")
    time_budget_s: float | None = _d("time_budget_s")
    resources: dict = field(default_factory=dict)
    stop: dict = field(default_factory=dict)
    checkpoint_frequency: int = _d("checkpoint.frequency")
    checkpoint_num_to_keep: int | None = _d("checkpoint.num_to_keep")
    checkpoint_at_end: bool = _d("checkpoint.at_end")
    max_failures: int = _d("max_failures")
    storage_path: str | None = _d("storage_path")

    @property
    def searched_fields(self) -> list[str]:
        return [p.field for p in self.search_space]

    @property
    def num_trials(self) -> int:
        """Trials Tune will create: num_samples × the product of the grid sizes."""
        grid = math.prod(len(p.args) for p in self.search_space if p.kind == "grid")
        return self.num_samples * grid

    def describe(self) -> str:
        s = self.scheduler
        return (
            f"sweep '{self.name}': {self.num_trials} trials, at most {self.max_concurrent_trials} at once; "
            f"{s.type.upper()} on {self.metric} ({self.mode}) by {s.time_attr} "
            f"(grace {s.grace_period:g}, max {s.max_t:g}, reduction factor {s.reduction_factor:g}); "
            f"best config picked by {self.select_metric} ({self.select_mode})"
            + "".join(f", {k} >= {v:g}" for k, v in self.select_min.items())
            + "; "
            f"searching {', '.join(self.searched_fields) or 'nothing'}"
        )


# --------------------------------------------------------------------------------------------- checking
def _checked(where: str, setting: Setting, value: Any) -> Any:
    """``value`` if ``setting`` allows it, else ValueError ``"<where>: <why>"``."""
    why = setting.why_invalid(value)
    if why is not None:
        raise ValueError(f"{where}: {why}")
    return value


def _get(block: Mapping, name: str) -> Any:
    """The value of FILE_SETTINGS[name] in ``block`` (its default when absent), checked."""
    setting = FILE_SETTINGS[name]
    return _checked(name, setting, block.get(name.rpartition(".")[2], setting.default))


def _mapping(where: str, value: Any, allowed: frozenset[str] | None = None, what: str = "") -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping{what}, got {value!r}")
    unknown = sorted(str(k) for k in value if allowed is not None and k not in allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(allowed))}")
    return value


def _check_field_name(where: str, name: Any, known: frozenset[str]) -> str:
    if not isinstance(name, str) or name not in known:
        close = difflib.get_close_matches(str(name), sorted(SETTINGS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"{where}: unknown SEPOConfig field {name!r}; {hint}SEPO fields include: {', '.join(sorted(SETTINGS))}"
        )
    return name


def sepo_config_fields() -> frozenset[str]:
    """Names a sweep may set: the settings (:func:`sepo_ray.resolve.is_setting`: the schema's and RLlib's)."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    from sepo_ray.resolve import DERIVED

    rllib = {k for k in vars(AlgorithmConfig()) if not k.startswith("_")} - set(DERIVED)
    return frozenset(set(SETTINGS) | rllib)


def _parse_param(name: str, spec: Any) -> Param:
    where = f"search_space.{name}"
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ValueError(f"{where}: expected one of {{{' | '.join(SPACE_KINDS)}: ...}}, got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in SPACE_KINDS:
        raise ValueError(f"{where}: unknown search kind {kind!r}; allowed: {', '.join(SPACE_KINDS)}")
    where = f"{where}.{kind}"
    if not isinstance(args, list) or not args:
        raise ValueError(f"{where}: expected a non-empty list, got {args!r}")
    if kind in ("grid", "choice"):
        for value in args:
            check(name, value, where)
        return Param(name, kind, tuple(args))
    if len(args) != 2:
        raise ValueError(f"{where}: expected [low, high], got {args!r}")
    low, high = args
    field_kind = SETTINGS[name].kind if name in SETTINGS else None
    if field_kind in ("str", "bool"):
        takes = "strings" if field_kind == "str" else "true or false"
        raise ValueError(f"{where}: {name} takes {takes}; use choice or grid")
    floats = kind in ("uniform", "loguniform")
    if floats and field_kind == "int":
        raise ValueError(
            f"{where}: {name} is an integer field; use randint, lograndint, choice or grid, not {kind}"
        )
    _checked(f"{where} low", _NUMBER if floats else _INTEGER, low)
    _checked(f"{where} high", _NUMBER if floats else _INTEGER, high)
    if not low < high:
        raise ValueError(f"{where}: invalid range [{low!r}, {high!r}]: low must be < high")
    if kind.startswith("log") and low <= 0:
        raise ValueError(f"{where}: invalid range [{low!r}, {high!r}]: a log space needs low > 0")
    check(name, low, where)
    check(name, high, where)
    return Param(name, kind, (low, high))


def _thresholds(where: str, value: Any, rule: Setting) -> dict:
    value = _mapping(where, value or {}, what=" of metric -> threshold")
    for key, threshold in value.items():
        _checked(f"{where} key", _METRIC_NAME, key)
        _checked(f"{where}.{key}", rule, threshold)
    return dict(value)


# ---------------------------------------------------------------------------------------------- parsing
def parse_sweep_spec(raw: Any, known_fields: frozenset[str] | None = None) -> SweepSpec:
    """Validate a sweep file's content (a dict from YAML) and return a SweepSpec.

    ``known_fields``: the config field names allowed in base_config / search_space (default:
    ``sepo_config_fields()``). Raises ValueError naming the first bad key or range.
    """
    raw = _mapping("sweep file", raw, TOP_LEVEL_KEYS)
    known = sepo_config_fields() if known_fields is None else frozenset(known_fields)

    if "name" not in raw:
        raise ValueError("name: missing (the experiment name)")
    name = _get(raw, "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"name: {name!r} must be letters, digits, '_', '.', '-' (it names a directory)")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"description: expected a string, got {description!r}")
    select_min = {k: float(v) for k, v in _thresholds("select_min", raw.get("select_min"), _NUMBER).items()}

    if "scheduler" not in raw:
        raise ValueError("scheduler: missing (an ASHA block: type, time_attr, max_t, grace_period, ...)")
    sched = _mapping("scheduler", raw["scheduler"], SCHEDULER_KEYS)
    time_attr = sched.get("time_attr", _d("scheduler.time_attr"))
    if time_attr not in TIME_ATTRS:
        raise ValueError(
            f"scheduler.time_attr: {time_attr!r} is not allowed; use one of {', '.join(TIME_ATTRS)} "
            "(T and M change what an iteration costs, so iteration counts are not a fair clock; the clocks are "
            "seconds trained and oracle calls spent)"
        )
    scheduler = SchedulerSpec(
        type=_get(sched, "scheduler.type"),
        time_attr=time_attr,
        max_t=float(_get(sched, "scheduler.max_t")),
        grace_period=float(_get(sched, "scheduler.grace_period")),
        reduction_factor=float(_get(sched, "scheduler.reduction_factor")),
        brackets=_get(sched, "scheduler.brackets"),
    )
    if scheduler.grace_period > scheduler.max_t:
        raise ValueError(
            f"scheduler.grace_period: {scheduler.grace_period!r} exceeds scheduler.max_t {scheduler.max_t!r}"
        )

    max_concurrent = _get(raw, "max_concurrent_trials")
    resources = dict(_mapping("resources", raw.get("resources") or {}, RESOURCES_KEYS))
    for key in resources:
        _get(resources, f"resources.{key}")
    if resources.get("num_cpus") is not None and max_concurrent > resources["num_cpus"]:
        raise ValueError(
            f"max_concurrent_trials: {max_concurrent} trials cannot run at once on "
            f"resources.num_cpus={resources['num_cpus']} (each trial holds at least one CPU)"
        )
    ckpt = _mapping("checkpoint", raw.get("checkpoint") or {}, CHECKPOINT_KEYS)
    time_budget_s = _get(raw, "time_budget_s")

    base_config = dict(
        _mapping("base_config", raw.get("base_config") or {}, what=" of SEPOConfig field -> value")
    )
    for key, value in base_config.items():
        _check_field_name(f"base_config.{key}", key, known)
        check(key, value, f"base_config.{key}")
    space = _mapping("search_space", raw.get("search_space") or {}, what=" of field -> {kind: args}")
    params = []
    for key, value in space.items():
        _check_field_name(f"search_space.{key}", key, known)
        if key in base_config:
            raise ValueError(f"search_space.{key}: also set in base_config; keep it in one place")
        params.append(_parse_param(key, value))

    return SweepSpec(
        name=name,
        description=description,
        metric=_get(raw, "metric"),
        mode=_get(raw, "mode"),
        select_metric=_get(raw, "select_metric"),
        select_mode=_get(raw, "select_mode"),
        select_min=select_min,
        scheduler=scheduler,
        num_samples=_get(raw, "num_samples"),
        max_concurrent_trials=max_concurrent,
        search_seed=_get(raw, "search_seed"),
        time_budget_s=None if time_budget_s is None else float(time_budget_s),
        resources=resources,
        stop=_thresholds("stop", raw.get("stop"), _POSITIVE),
        checkpoint_frequency=_get(ckpt, "checkpoint.frequency"),
        checkpoint_num_to_keep=_get(ckpt, "checkpoint.num_to_keep"),
        checkpoint_at_end=_get(ckpt, "checkpoint.at_end"),
        max_failures=_get(raw, "max_failures"),
        storage_path=_get(raw, "storage_path"),
        base_config=base_config,
        search_space=tuple(params),
    )


def read_sweep_yaml(path: str | os.PathLike) -> Any:
    """The raw content of a sweep YAML (the schema's YAML: 1e-3 is a float, duplicate keys are refused)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file: {str(path)!r} does not exist")
    try:
        return yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"sweep file {str(path)!r}: not valid YAML: {err}") from None


def load_sweep_spec(path: str | os.PathLike, known_fields: frozenset[str] | None = None) -> SweepSpec:
    """Read and validate a sweep YAML; ValueError names the file and the bad key."""
    raw = read_sweep_yaml(path)
    try:
        return parse_sweep_spec(raw, known_fields)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
