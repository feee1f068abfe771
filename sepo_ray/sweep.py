"""Ray Tune sweeps over SEPO hyperparameters, described in YAML.

    python -m sepo_ray.sweep tune_configs/cpu_small.yaml [--output DIR] [--resume] [--address A] [--dry-run]

runs a Tune ``Tuner`` over the ``SEPO`` algorithm (an RLlib ``Algorithm`` is a Tune ``Trainable``), shows
Tune's progress table, writes ``DIR/sweep.json`` (one row per trial: its sampled config, metrics, status)
and prints the best config by held-out Pred-Activity. A sweep stopped part-way (Ctrl-C, a lost node, an
errored trial) continues with ``--resume`` (``Tuner.restore``).

The sweep file (every key is checked; an unknown key or an invalid range raises ``ValueError`` naming it):

    name: cpu_small                    # experiment name: DIR/<name> holds Tune's experiment
    description: ...                   # free text (optional)
    metric: sepo/reward_mean           # what the scheduler compares (fine-tuning reward)
    mode: max                          # max | min
    select_metric: sepo/heldout_pred_activity  # what picks the best config (held-out eval oracle)
    select_mode: max
    select_min: {sepo/heldout_kmer3_corr: 0.8}  # realism guards: a trial below any is never picked (optional)
    scheduler:                         # ASHA (async successive halving)
      type: asha
      time_attr: time_total_s          # seconds of training: fair when T and M change an iteration's cost
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
``lograndint`` ``[low, high]`` (integers, inclusive). Integer fields (T, M, K epochs, ...) refuse float
spaces. Field names are checked against ``SEPOConfig`` (the documented SEPO fields plus RLlib's
``AlgorithmConfig`` attributes until ``sepo_ray.rllib`` is importable, its real attributes after), and before
a sweep starts the base config with each searched value goes through ``SEPOConfig.validate()``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# --------------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------------

TOP_LEVEL_KEYS = frozenset(
    {
        "name",
        "description",
        "metric",
        "mode",
        "select_metric",
        "select_mode",
        "select_min",
        "scheduler",
        "num_samples",
        "max_concurrent_trials",
        "search_seed",
        "time_budget_s",
        "resources",
        "stop",
        "checkpoint",
        "max_failures",
        "storage_path",
        "base_config",
        "search_space",
    }
)
SCHEDULER_KEYS = frozenset({"type", "time_attr", "max_t", "grace_period", "reduction_factor", "brackets"})
RESOURCES_KEYS = frozenset({"num_cpus", "num_gpus"})
CHECKPOINT_KEYS = frozenset({"frequency", "num_to_keep", "at_end"})
SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint", "lograndint")
SCHEDULERS = ("asha",)
# Cost-fair progress measures: T denoising steps and M SNIS samples change what one iteration costs,
# so iterations are not comparable across trials (training_iteration is refused on purpose).
TIME_ATTRS = ("time_total_s",)

DEFAULT_METRIC = "sepo/reward_mean"
DEFAULT_SELECT_METRIC = "sepo/heldout_pred_activity"

# SEPOConfig fields every sweep may rely on (SEPO's own and the standard RLlib ones it documents).
DOCUMENTED_FIELDS = frozenset(
    {
        "clip_eps",
        "kl_alpha",
        "snis_samples",
        "denoise_steps",
        "corrector_steps",
        "group_size",
        "prompts_per_batch",
        "neighbour_positions",
        "score_estimator",
        "advantage",
        "kl_steps",
        "task",
        "reward",
        "oracle_actors",
        "oracle_num_gpus",
        "heldout_eval_interval",
        "heldout_samples",
        "checkpoint_frequency",
        "lr",
        "num_epochs",
        "num_env_runners",
        "num_learners",
        "num_gpus_per_learner",
        "num_gpus_per_env_runner",
        "seed",
    }
)


class SweepError(ValueError):
    """A sweep that cannot start as asked (nothing to resume, or an existing sweep in the way)."""


@dataclass(frozen=True)
class _Rule:
    """Allowed values of one config field: kind "int" | "float" | "str", bounds, None allowed or not."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    choices: tuple[str, ...] = ()


FIELD_RULES: dict[str, _Rule] = {
    "clip_eps": _Rule("float", 0.0, 1.0, low_open=True, high_open=True),  # ratio clipped to [1-ε, 1+ε]
    "kl_alpha": _Rule("float", 0.0),
    "snis_samples": _Rule("int", 0),  # M; 0 = single-sample π
    "denoise_steps": _Rule("int", 1),  # T
    "corrector_steps": _Rule("int", 0),
    "group_size": _Rule("int", 1),  # G
    "prompts_per_batch": _Rule("int", 1),  # B
    "neighbour_positions": _Rule("int", 1, nullable=True),  # K positions; None = all
    "score_estimator": _Rule("str", choices=("clean", "conditional")),
    "advantage": _Rule("str", choices=("grpo", "ppo")),
    "kl_steps": _Rule("int", 1),
    "task": _Rule("str"),
    "reward": _Rule("str", nullable=True),
    "oracle_actors": _Rule("int", 0),
    "oracle_num_gpus": _Rule("float", 0.0),
    "heldout_eval_interval": _Rule("int", 0),
    "heldout_samples": _Rule("int", 1),
    "checkpoint_frequency": _Rule("int", 0),
    "lr": _Rule("float", 0.0, low_open=True),
    "num_epochs": _Rule("int", 1),  # K epochs
    "num_env_runners": _Rule("int", 0),
    "num_learners": _Rule("int", 0),
    "num_gpus_per_learner": _Rule("float", 0.0),
    "num_gpus_per_env_runner": _Rule("float", 0.0),
    "seed": _Rule("int", nullable=True),
}


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA settings; ``max_t`` and ``grace_period`` are in units of ``time_attr`` (seconds)."""

    type: str = "asha"
    time_attr: str = "time_total_s"
    max_t: float = 60.0
    grace_period: float = 10.0
    reduction_factor: float = 2.0
    brackets: int = 1


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
    metric: str = DEFAULT_METRIC
    mode: str = "max"
    select_metric: str = DEFAULT_SELECT_METRIC
    select_mode: str = "max"
    select_min: dict = field(default_factory=dict)
    num_samples: int = 1
    max_concurrent_trials: int = 1
    search_seed: int | None = None
    time_budget_s: float | None = None
    resources: dict = field(default_factory=dict)
    stop: dict = field(default_factory=dict)
    checkpoint_frequency: int = 0
    checkpoint_num_to_keep: int | None = 1
    checkpoint_at_end: bool = True
    max_failures: int = 0
    storage_path: str | None = None

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


# --------------------------------------------------------------------------------------------------------
# Loading and validation (pure)
# --------------------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``) and refuses duplicate keys."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ValueError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _config_attrs(config: Any) -> set[str]:
    names = {k for k in vars(config) if not k.startswith("_")}
    try:
        names |= set(config.to_dict())
    except Exception:  # noqa: BLE001 - to_dict of a partly built config is optional extra coverage
        pass
    return names


def sepo_config_fields() -> frozenset[str]:
    """Names a sweep may set: SEPOConfig's attributes, or the documented ones if sepo_ray.rllib is absent."""
    try:
        from sepo_ray.rllib import SEPOConfig
    except ModuleNotFoundError as err:
        if err.name not in ("sepo_ray.rllib", "sepo_ray"):
            raise
        from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

        return frozenset(DOCUMENTED_FIELDS | _config_attrs(AlgorithmConfig()))
    return frozenset(_config_attrs(SEPOConfig()))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _check_keys(where: str, value: Any, allowed: frozenset[str]) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(allowed))}")
    return value


def _int(where: str, value: Any, low: int | None = None) -> int:
    if not _is_int(value):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{where}: must be >= {low}, got {value}")
    return value


def _number(where: str, value: Any, low: float | None = None, strict: bool = False) -> float:
    if not _is_number(value):
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{where}: must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return value


def _str(where: str, value: Any, choices: Sequence[str] = ()) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a non-empty string, got {value!r}")
    if choices and value not in choices:
        raise ValueError(f"{where}: must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_field_value(name: str, value: Any, where: str) -> None:
    """Check one SEPOConfig value against FIELD_RULES (fields without a rule accept anything)."""
    rule = FIELD_RULES.get(name)
    if rule is None:
        return
    if value is None:
        if not rule.nullable:
            raise ValueError(f"{where}: {name} may not be null")
        return
    if rule.kind == "str":
        _str(where, value, rule.choices)
        return
    if rule.kind == "int" and not _is_int(value):
        raise ValueError(f"{where}: {name} takes integers, got {value!r}")
    if not _is_number(value):
        raise ValueError(f"{where}: {name} takes finite numbers, got {value!r}")
    if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
        raise ValueError(
            f"{where}: {name} must be {'>' if rule.low_open else '>='} {rule.low:g}, got {value!r}"
        )
    if rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high):
        raise ValueError(
            f"{where}: {name} must be {'<' if rule.high_open else '<='} {rule.high:g}, got {value!r}"
        )


def _check_field_name(where: str, name: Any, known: frozenset[str]) -> str:
    if not isinstance(name, str) or name not in known:
        hint = ", ".join(sorted(DOCUMENTED_FIELDS))
        raise ValueError(f"{where}: unknown SEPOConfig field {name!r}; SEPO fields include: {hint}")
    return name


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
    rule = FIELD_RULES.get(name)
    if kind in ("grid", "choice"):
        for value in args:
            check_field_value(name, value, where)
        return Param(name, kind, tuple(args))
    if len(args) != 2:
        raise ValueError(f"{where}: expected [low, high], got {args!r}")
    low, high = args
    if kind in ("uniform", "loguniform"):
        if rule is not None and rule.kind == "int":
            raise ValueError(
                f"{where}: {name} is an integer field; use randint, lograndint, choice or grid, not {kind}"
            )
        if rule is not None and rule.kind == "str":
            raise ValueError(f"{where}: {name} takes strings; use choice or grid")
        _number(f"{where} low", low)
        _number(f"{where} high", high)
    else:
        if rule is not None and rule.kind == "str":
            raise ValueError(f"{where}: {name} takes strings; use choice or grid")
        _int(f"{where} low", low)
        _int(f"{where} high", high)
    if not low < high:
        raise ValueError(f"{where}: invalid range [{low!r}, {high!r}]: low must be < high")
    if kind.startswith("log") and low <= 0:
        raise ValueError(f"{where}: invalid range [{low!r}, {high!r}]: a log space needs low > 0")
    check_field_value(name, low, where)
    check_field_value(name, high, where)
    return Param(name, kind, (low, high))


def parse_sweep_spec(raw: Any, known_fields: frozenset[str] | None = None) -> SweepSpec:
    """Validate a sweep file's content (a dict from YAML) and return a SweepSpec.

    ``known_fields``: the config field names allowed in base_config / search_space (default:
    ``sepo_config_fields()``). Raises ValueError naming the first bad key or range.
    """
    raw = _check_keys("sweep file", raw, TOP_LEVEL_KEYS)
    known = sepo_config_fields() if known_fields is None else frozenset(known_fields)

    if "name" not in raw:
        raise ValueError("name: missing (the experiment name)")
    name = _str("name", raw["name"])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"name: {name!r} must be letters, digits, '_', '.', '-' (it names a directory)")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"description: expected a string, got {description!r}")

    metric = _str("metric", raw.get("metric", DEFAULT_METRIC))
    mode = _str("mode", raw.get("mode", "max"), ("max", "min"))
    select_metric = _str("select_metric", raw.get("select_metric", DEFAULT_SELECT_METRIC))
    select_mode = _str("select_mode", raw.get("select_mode", "max"), ("max", "min"))
    select_min = raw.get("select_min") or {}
    if not isinstance(select_min, Mapping):
        raise ValueError(f"select_min: expected a mapping of metric -> minimum, got {select_min!r}")
    for key, value in select_min.items():
        _str("select_min key", key)
        _number(f"select_min.{key}", value)
    select_min = {k: float(v) for k, v in select_min.items()}

    if "scheduler" not in raw:
        raise ValueError("scheduler: missing (an ASHA block: type, time_attr, max_t, grace_period, ...)")
    sched = _check_keys("scheduler", raw["scheduler"], SCHEDULER_KEYS)
    time_attr = sched.get("time_attr", "time_total_s")
    if time_attr not in TIME_ATTRS:
        raise ValueError(
            f"scheduler.time_attr: {time_attr!r} is not allowed; use one of {', '.join(TIME_ATTRS)} "
            "(T and M change what an iteration costs, so iteration counts are not a fair clock)"
        )
    max_t = _number("scheduler.max_t", sched.get("max_t", 60.0), 0.0, strict=True)
    grace = _number("scheduler.grace_period", sched.get("grace_period", 10.0), 0.0, strict=True)
    if grace > max_t:
        raise ValueError(f"scheduler.grace_period: {grace!r} exceeds scheduler.max_t {max_t!r}")
    rf = _number("scheduler.reduction_factor", sched.get("reduction_factor", 2.0))
    if rf <= 1:
        raise ValueError(f"scheduler.reduction_factor: must be > 1, got {rf!r}")
    scheduler = SchedulerSpec(
        type=_str("scheduler.type", sched.get("type", "asha"), SCHEDULERS),
        time_attr=time_attr,
        max_t=float(max_t),
        grace_period=float(grace),
        reduction_factor=float(rf),
        brackets=_int("scheduler.brackets", sched.get("brackets", 1), 1),
    )

    num_samples = _int("num_samples", raw.get("num_samples", 1), 1)
    max_concurrent = _int("max_concurrent_trials", raw.get("max_concurrent_trials", 1), 1)
    search_seed = raw.get("search_seed")
    if search_seed is not None:
        _int("search_seed", search_seed, 0)
    time_budget_s = raw.get("time_budget_s")
    if time_budget_s is not None:
        time_budget_s = float(_number("time_budget_s", time_budget_s, 0.0, strict=True))

    resources = dict(_check_keys("resources", raw.get("resources") or {}, RESOURCES_KEYS))
    if "num_cpus" in resources:
        _int("resources.num_cpus", resources["num_cpus"], 1)
        if max_concurrent > resources["num_cpus"]:
            raise ValueError(
                f"max_concurrent_trials: {max_concurrent} trials cannot run at once on "
                f"resources.num_cpus={resources['num_cpus']} (each trial holds at least one CPU)"
            )
    if "num_gpus" in resources:
        _int("resources.num_gpus", resources["num_gpus"], 0)

    stop = raw.get("stop") or {}
    if not isinstance(stop, Mapping):
        raise ValueError(f"stop: expected a mapping of metric -> threshold, got {stop!r}")
    for key, value in stop.items():
        _str("stop key", key)
        _number(f"stop.{key}", value, 0.0, strict=True)

    ckpt = _check_keys("checkpoint", raw.get("checkpoint") or {}, CHECKPOINT_KEYS)
    ckpt_frequency = _int("checkpoint.frequency", ckpt.get("frequency", 0), 0)
    ckpt_keep = ckpt.get("num_to_keep", 1)
    if ckpt_keep is not None:
        _int("checkpoint.num_to_keep", ckpt_keep, 1)
    ckpt_at_end = ckpt.get("at_end", True)
    if not isinstance(ckpt_at_end, bool):
        raise ValueError(f"checkpoint.at_end: expected true or false, got {ckpt_at_end!r}")

    max_failures = _int("max_failures", raw.get("max_failures", 0), -1)
    storage_path = raw.get("storage_path")
    if storage_path is not None:
        _str("storage_path", storage_path)

    base_config = raw.get("base_config") or {}
    if not isinstance(base_config, Mapping):
        raise ValueError(f"base_config: expected a mapping of SEPOConfig field -> value, got {base_config!r}")
    base_config = dict(base_config)
    for key, value in base_config.items():
        _check_field_name(f"base_config.{key}", key, known)
        check_field_value(key, value, f"base_config.{key}")

    space = raw.get("search_space") or {}
    if not isinstance(space, Mapping):
        raise ValueError(f"search_space: expected a mapping of field -> {{kind: args}}, got {space!r}")
    params = []
    for key, value in space.items():
        _check_field_name(f"search_space.{key}", key, known)
        if key in base_config:
            raise ValueError(f"search_space.{key}: also set in base_config; keep it in one place")
        params.append(_parse_param(key, value))

    return SweepSpec(
        name=name,
        description=description,
        metric=metric,
        mode=mode,
        select_metric=select_metric,
        select_mode=select_mode,
        select_min=select_min,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent,
        search_seed=search_seed,
        time_budget_s=time_budget_s,
        resources=resources,
        stop=dict(stop),
        checkpoint_frequency=ckpt_frequency,
        checkpoint_num_to_keep=ckpt_keep,
        checkpoint_at_end=ckpt_at_end,
        max_failures=max_failures,
        storage_path=storage_path,
        base_config=base_config,
        search_space=tuple(params),
    )


def read_sweep_yaml(path: str | os.PathLike) -> Any:
    """The raw content of a sweep YAML (floats like 1e-3 read as floats, duplicate keys refused)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file: {str(path)!r} does not exist")
    with open(path) as f:
        try:
            return yaml.load(f, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as err:
            raise ValueError(f"sweep file {str(path)!r}: not valid YAML: {err}") from None


def load_sweep_spec(path: str | os.PathLike, known_fields: frozenset[str] | None = None) -> SweepSpec:
    """Read and validate a sweep YAML; ValueError names the file and the bad key."""
    raw = read_sweep_yaml(path)
    try:
        return parse_sweep_spec(raw, known_fields)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


# --------------------------------------------------------------------------------------------------------
# Tune objects
# --------------------------------------------------------------------------------------------------------


def tune_domain(param: Param) -> Any:
    """The Tune search domain of one Param (integer bounds are inclusive, Tune's upper is exclusive)."""
    from ray import tune

    kind, args = param.kind, param.args
    if kind == "grid":
        return tune.grid_search(list(args))
    if kind == "choice":
        return tune.choice(list(args))
    if kind == "uniform":
        return tune.uniform(float(args[0]), float(args[1]))
    if kind == "loguniform":
        return tune.loguniform(float(args[0]), float(args[1]))
    if kind == "randint":
        return tune.randint(args[0], args[1] + 1)
    if kind == "lograndint":
        return tune.lograndint(args[0], args[1] + 1)
    raise ValueError(f"search_space.{param.field}: unknown search kind {kind!r}")


def build_param_space(spec: SweepSpec, config_cls: type | None = None) -> dict:
    """Tune param_space: the base config (through ``config_cls().update_from_dict`` when given, i.e. a
    full SEPOConfig dict) with each searched field replaced by its Tune domain (top-level keys)."""
    if config_cls is not None:
        base = config_cls().update_from_dict(dict(spec.base_config)).to_dict()
    else:
        base = dict(spec.base_config)
    for param in spec.search_space:
        base[param.field] = tune_domain(param)
    return base


def make_scheduler(spec: SweepSpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(
        time_attr=s.time_attr,
        metric=spec.metric,
        mode=spec.mode,
        max_t=s.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        brackets=s.brackets,
    )


def _shown_metrics(spec: SweepSpec) -> dict[str, str]:
    return {
        "training_iteration": "iter",
        "time_total_s": "time (s)",
        spec.metric: spec.metric.rsplit("/", 1)[-1],
        "sepo/kl": "kl",
        spec.select_metric: spec.select_metric.rsplit("/", 1)[-1],
        **{k: k.rsplit("/", 1)[-1] for k in spec.select_min},
    }


def progress_reporter(spec: SweepSpec) -> Any:
    """Tune's table: status, the searched values, reward, KL, held-out Pred-Activity, time."""
    from ray.tune import CLIReporter

    metrics = _shown_metrics(spec)
    return CLIReporter(
        metric_columns=metrics,
        parameter_columns={p: p for p in spec.searched_fields},
        metric=spec.metric,
        mode=spec.mode,
        max_report_frequency=15,
        sort_by_metric=True,
    )


# --------------------------------------------------------------------------------------------------------
# Results: one row per trial, the best config, sweep.json (pure)
# --------------------------------------------------------------------------------------------------------


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _jsonable(x: Any) -> Any:
    """Plain JSON values: numpy scalars -> Python, NaN/inf -> None, tuples -> lists, others -> str."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return x
    if hasattr(x, "item") and callable(x.item):  # numpy scalar
        return _jsonable(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return str(x)


def asha_rungs(scheduler: SchedulerSpec) -> list[float]:
    """The rung milestones of ASHA (all brackets): grace_period * rf^(k+s) below max_t, as Ray builds them."""
    rungs = set()
    rf, grace = scheduler.reduction_factor, scheduler.grace_period
    for s in range(scheduler.brackets):
        num_rungs = int(math.log(scheduler.max_t / grace) / math.log(rf) - s + 1)
        rungs |= {grace * rf ** (k + s) for k in range(num_rungs)}
    return sorted(r for r in rungs if r < scheduler.max_t)


def _reached(value: Any, threshold: float) -> bool:
    value = _finite(value)
    return value is not None and value >= threshold


def summarize_trial(record: Mapping, spec: SweepSpec) -> dict:
    """One sweep.json row from a trial record.

    ``record``: {"trial_id", "status", "config" (searched values), "history" (list of flat result dicts,
    "/"-joined keys, one per reported iteration), "error" (str or None)}. A metric that some iterations
    do not report (the held-out eval) is summarised over the iterations that do; ``stopped_early`` marks a
    TERMINATED trial that ASHA ended at a rung, before ``max_t`` and any ``stop`` threshold.
    """
    history = list(record.get("history") or [])
    last = history[-1] if history else {}

    def summary(key: str, mode: str) -> dict:
        values = [v for v in (_finite(h.get(key)) for h in history) if v is not None]
        best = (max if mode == "max" else min)(values) if values else None
        return {"last": values[-1] if values else None, "best": best, "num_reports": len(values)}

    metrics = {spec.metric: summary(spec.metric, spec.mode)}
    metrics[spec.select_metric] = summary(spec.select_metric, spec.select_mode)
    for key in spec.select_min:
        metrics.setdefault(key, summary(key, "max"))
    for key in ("training_iteration", spec.scheduler.time_attr, *spec.stop):
        if key not in metrics:
            metrics[key] = _finite(last.get(key))

    status = str(record.get("status") or "UNKNOWN")
    clock = _finite(last.get(spec.scheduler.time_attr))
    before = _finite(history[-2].get(spec.scheduler.time_attr)) if len(history) > 1 else 0.0
    reached_max_t = clock is not None and clock >= spec.scheduler.max_t
    reached_stop = any(_reached(last.get(k), v) for k, v in spec.stop.items())
    # ASHA decides only on the first result at or past a rung: a trial whose last result crossed one
    # without reaching max_t or a stop threshold was stopped by the scheduler.
    crossed_rung = clock is not None and any((before or 0.0) < r <= clock for r in asha_rungs(spec.scheduler))
    # the realism guards, on each metric's last reported value (None: some guard metric was never reported)
    lasts = [metrics[k]["last"] for k in spec.select_min]
    meets = None if None in lasts else all(v >= spec.select_min[k] for k, v in zip(spec.select_min, lasts))
    return {
        "trial_id": str(record.get("trial_id")),
        "status": status,
        "stopped_early": status == "TERMINATED" and crossed_rung and not (reached_max_t or reached_stop),
        "meets_select_min": meets if spec.select_min else True,
        "config": _jsonable(dict(record.get("config") or {})),
        "metrics": _jsonable(metrics),
        "error": record.get("error"),
    }


def select_best(rows: Sequence[Mapping], spec: SweepSpec) -> dict | None:
    """The best trial by the last reported ``select_metric`` (held-out Pred-Activity).

    Only trials that meet every ``select_min`` guard (on its last reported value) are candidates. Among them,
    first non-empty set wins: trials that ran to the end (not stopped early, not errored) and reported the
    metric; any trial that reported it; then, as a fallback, trials ranked by the scheduler's ``metric``
    (last value). Returns None when no candidate reported either.
    """
    rows = [r for r in rows if r.get("meets_select_min", True)]
    for key, mode in ((spec.select_metric, spec.select_mode), (spec.metric, spec.mode)):
        scored = [r for r in rows if (r["metrics"].get(key) or {}).get("last") is not None]
        finished = [r for r in scored if r["status"] == "TERMINATED" and not r["stopped_early"]]
        pool = finished or scored
        if pool:
            sign = 1.0 if mode == "max" else -1.0
            best = max(pool, key=lambda r: sign * r["metrics"][key]["last"])
            return {
                "trial_id": best["trial_id"],
                "selected_by": key,
                "value": best["metrics"][key]["last"],
                "config": dict(best["config"]),
                "sepo_config": {**spec.base_config, **best["config"]},
            }
    return None


def sweep_report(spec: SweepSpec, records: Sequence[Mapping], experiment_path: str = "") -> dict:
    """The content of sweep.json: the sweep's settings, one row per trial, the best config."""
    rows = [summarize_trial(r, spec) for r in records]
    rows.sort(key=lambda r: r["trial_id"])
    best = select_best(rows, spec)
    s = spec.scheduler
    return _jsonable(
        {
            "name": spec.name,
            "experiment_path": str(experiment_path),
            "metric": spec.metric,
            "mode": spec.mode,
            "select_metric": spec.select_metric,
            "select_mode": spec.select_mode,
            "select_min": spec.select_min,
            "scheduler": {
                "type": s.type,
                "time_attr": s.time_attr,
                "max_t": s.max_t,
                "grace_period": s.grace_period,
                "reduction_factor": s.reduction_factor,
                "brackets": s.brackets,
            },
            "searched_fields": spec.searched_fields,
            "base_config": spec.base_config,
            "num_trials": len(rows),
            "num_terminated": sum(r["status"] == "TERMINATED" for r in rows),
            "num_errored": sum(r["status"] == "ERROR" for r in rows),
            "num_stopped_early": sum(bool(r["stopped_early"]) for r in rows),
            "num_below_select_min": sum(r["meets_select_min"] is False for r in rows),
            "num_unchecked_select_min": sum(r["meets_select_min"] is None for r in rows),
            "best": best,
            "trials": rows,
        }
    )


def write_sweep_json(path: str | os.PathLike, report: Mapping) -> Path:
    """Write sweep.json atomically (a half-written file never replaces a good one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_jsonable(report), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def format_report(report: Mapping) -> str:
    """A short text table of the trials and the best config."""
    metric, select = report["metric"], report["select_metric"]
    lines = [
        f"{report['num_trials']} trials: {report['num_terminated']} terminated "
        f"({report['num_stopped_early']} stopped early by the scheduler), {report['num_errored']} errored"
    ]
    guards = report.get("select_min") or {}
    for row in report["trials"]:
        m = row["metrics"]
        reward = (m.get(metric) or {}).get("last")
        heldout = (m.get(select) or {}).get("last")
        extra = "".join(f" {k}={_fmt((m.get(k) or {}).get('last'))}" for k in guards)
        meets = row.get("meets_select_min", True)
        flag = {True: "", False: "  [below select_min]", None: "  [select_min metric not reported]"}[meets]
        lines.append(
            f"  {row['trial_id']:<12} {row['status']:<10} {'early' if row['stopped_early'] else '     '} "
            f"{metric}={_fmt(reward)} {select}={_fmt(heldout)}{extra} {_fmt_config(row['config'])}{flag}"
        )
    best = report.get("best")
    if (
        best is None
        and guards
        and (report.get("num_below_select_min") or report.get("num_unchecked_select_min"))
    ):
        bounds = ", ".join(f"{k} >= {v:g}" for k, v in guards.items())
        lines.append(
            f"No trial met select_min ({bounds}) with {select} or {metric} reported: no best config."
        )
    elif best is None:
        lines.append(f"No trial reported {select} or {metric}: no best config.")
    else:
        lines.append(
            f"Best config by {best['selected_by']} = {_fmt(best['value'])} (trial {best['trial_id']}): "
            f"{_fmt_config(best['config'])}"
        )
        if best["selected_by"] != select:
            lines.append(f"  (no finished trial reported {select}; ranked by {best['selected_by']})")
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _fmt_config(config: Mapping) -> str:
    return ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in config.items())


# --------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------


def default_trainable() -> tuple[Any, type]:
    """(SEPO, SEPOConfig) from sepo_ray.rllib."""
    from sepo_ray.rllib import SEPO, SEPOConfig

    return SEPO, SEPOConfig


def check_against_config(spec: SweepSpec, config_cls: type) -> None:
    """Run ``config_cls().update_from_dict(...).validate()`` on the base config and on the base config with
    each searched value (grid/choice values, range ends), so that a value SEPOConfig refuses (e.g. T below
    kl_steps) stops the sweep before any trial starts. Raises SweepError naming the key and the value."""

    def check(values: dict, where: str) -> None:
        try:
            config_cls().update_from_dict(values).validate()
        except ValueError as err:
            raise SweepError(f"{where}: {err}") from None

    check(dict(spec.base_config), "base_config")
    for param in spec.search_space:
        for value in param.args:
            check({**spec.base_config, param.field: value}, f"search_space.{param.field}={value!r}")


def trial_resources(trainable: Any, param_space: Mapping) -> dict | None:
    """Total CPU/GPU one trial asks for (RLlib's placement-group bundles), or None if unknown."""
    request = getattr(trainable, "default_resource_request", None)
    if request is None:
        return None
    pgf = request({k: v for k, v in param_space.items() if not _is_domain(v)})
    if pgf is None:
        return None
    bundles = getattr(pgf, "bundles", None) or [getattr(pgf, "required_resources", {})]
    return {
        "CPU": sum(float(b.get("CPU", 0)) for b in bundles),
        "GPU": sum(float(b.get("GPU", 0)) for b in bundles),
    }


def _is_domain(value: Any) -> bool:
    from ray.tune.search.sample import Domain

    return isinstance(value, Domain) or (isinstance(value, Mapping) and "grid_search" in value)


def _history(df: Any, wanted: set[str]) -> list[dict]:
    if df is None or not len(df):
        return []
    return df[[c for c in df.columns if c in wanted]].to_dict("records")


def _error_text(error: Any) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _trial_records(grid: Any, spec: SweepSpec) -> list[dict]:
    """Trial records (see summarize_trial) from a Tune ResultGrid, trials that never reported included.

    Tune's Trial objects carry the status (PENDING, RUNNING, PAUSED after an interrupted sweep); the public
    Result objects are the fallback when they are not reachable.
    """
    wanted = {"training_iteration", spec.scheduler.time_attr, spec.metric, spec.select_metric, "sepo/kl"}
    wanted |= set(spec.stop) | set(spec.select_min)
    analysis = getattr(grid, "_experiment_analysis", None)
    trials = getattr(analysis, "trials", None)
    records = []
    if trials is not None:
        frames = analysis.trial_dataframes
        populate = getattr(type(grid), "_populate_exception", lambda trial: None)
        for trial in trials:
            config = trial.config or {}
            records.append(
                {
                    "trial_id": trial.trial_id,
                    "status": trial.status,
                    "config": {k: config.get(k) for k in spec.searched_fields},
                    "history": _history(frames.get(trial.trial_id), wanted),
                    "error": _error_text(populate(trial)) if trial.status == "ERROR" else None,
                }
            )
        return records
    for result in grid:
        metrics, config = result.metrics or {}, result.config or {}
        records.append(
            {
                "trial_id": metrics.get("trial_id") or Path(str(result.path)).name,
                "status": "ERROR" if result.error else "TERMINATED",
                "config": {k: config.get(k) for k in spec.searched_fields},
                "history": _history(result.metrics_dataframe, wanted),
                "error": _error_text(result.error),
            }
        )
    return records


def _ensure_ray(spec: SweepSpec, address: str | None) -> bool:
    """Join ``address`` (or RAY_ADDRESS), or start a local Ray sized by ``resources``; True if started."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(
            num_cpus=spec.resources.get("num_cpus"),
            num_gpus=spec.resources.get("num_gpus"),
            include_dashboard=False,
        )
    return True


def _num_alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def run_sweep(
    spec: SweepSpec,
    output: str | os.PathLike,
    resume: bool = False,
    trainable: Any = None,
    config_cls: type | None = None,
    address: str | None = None,
    verbose: int = 1,
) -> dict:
    """Run (or with ``resume`` continue) the sweep; write ``output/sweep.json``; return its content.

    ``trainable`` defaults to ``sepo_ray.rllib.SEPO`` with ``config_cls`` SEPOConfig; Tune's experiment
    lives in ``storage_path/<name>`` (``storage_path`` defaults to ``output``). ``verbose``: 0 silent,
    1 Tune's status table (every 15 s), 2 also a line per trial result.
    """
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if trainable is None:
        trainable, config_cls = default_trainable()
    output = Path(output).expanduser().resolve()
    storage_path = spec.storage_path or str(output)
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).expanduser().resolve())
    experiment_path = f"{storage_path.rstrip('/')}/{spec.name}"

    can_restore = tune.Tuner.can_restore(experiment_path)
    if resume and not can_restore:
        raise SweepError(f"--resume: no Tune experiment to restore at {experiment_path}")
    if not resume and can_restore:
        raise SweepError(
            f"--output: a sweep named {spec.name!r} already exists at {experiment_path}; "
            "pass --resume to continue it or choose another --output"
        )
    if not resume and hasattr(config_cls, "validate"):
        check_against_config(spec, config_cls)

    started_ray = _ensure_ray(spec, address)
    if "://" not in storage_path and _num_alive_nodes() > 1:
        print(
            f"warning: storage_path {storage_path} is a local directory on a multi-node cluster; trials on "
            "other nodes cannot write checkpoints there. Set storage_path to s3://, gs:// or a shared mount.",
            flush=True,
        )
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the table reporter with our metric columns
    try:
        param_space = build_param_space(spec, config_cls)
        if resume:
            print(f"Resuming {experiment_path}", flush=True)
            # the same param_space again: Tune keeps non-primitive config values (classes, specs) as
            # placeholders that only the original objects resolve for trials created after the restore
            tuner = tune.Tuner.restore(
                experiment_path, trainable=trainable, resume_errored=True, param_space=param_space
            )
        else:
            need = trial_resources(trainable, param_space)
            if need is not None:
                print(f"Each trial asks for {need['CPU']:g} CPU, {need['GPU']:g} GPU", flush=True)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=TuneConfig(
                    scheduler=make_scheduler(spec),
                    search_alg=BasicVariantGenerator(
                        max_concurrent=spec.max_concurrent_trials, random_state=spec.search_seed
                    ),
                    num_samples=spec.num_samples,
                    time_budget_s=spec.time_budget_s,
                ),
                run_config=RunConfig(
                    name=spec.name,
                    storage_path=storage_path,
                    stop=dict(spec.stop) or None,
                    checkpoint_config=CheckpointConfig(
                        checkpoint_frequency=spec.checkpoint_frequency,
                        checkpoint_at_end=spec.checkpoint_at_end,
                        num_to_keep=spec.checkpoint_num_to_keep,
                    ),
                    failure_config=FailureConfig(max_failures=spec.max_failures),
                    progress_reporter=progress_reporter(spec),
                    verbose=verbose,
                ),
            )
        grid = tuner.fit()
        report = sweep_report(spec, _trial_records(grid, spec), experiment_path)
    finally:
        if previous is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous
        if started_ray:
            import ray

            ray.shutdown()
    path = write_sweep_json(output / "sweep.json", report)
    print(format_report(report), flush=True)
    print(f"Wrote {path}", flush=True)
    if report["num_terminated"] < report["num_trials"]:
        print(f"Some trials did not finish: continue with --resume --output {output}", flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sepo_ray.sweep", description="Ray Tune sweep of SEPO hyperparameters (YAML)."
    )
    parser.add_argument("config", help="sweep YAML, e.g. tune_configs/cpu_small.yaml")
    parser.add_argument("--output", default=None, help="directory for sweep.json (default: sweeps/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue a sweep stopped part-way")
    parser.add_argument("--address", default=None, help="Ray address to join (default: RAY_ADDRESS or local)")
    parser.add_argument("--dry-run", action="store_true", help="validate the file, print the plan, exit")
    args = parser.parse_args(argv)
    try:
        spec = load_sweep_spec(args.config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    output = Path(args.output) if args.output else Path("sweeps") / spec.name
    print(spec.describe(), flush=True)
    if args.dry_run:
        for p in spec.search_space:
            print(f"  {p.field}: {p.kind} {list(p.args)}")
        trainable, config_cls = default_trainable()
        try:
            check_against_config(spec, config_cls)
        except SweepError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        need = trial_resources(trainable, build_param_space(spec, config_cls))
        if need is not None:
            print(f"Each trial asks for {need['CPU']:g} CPU, {need['GPU']:g} GPU")
        return 0
    try:
        run_sweep(spec, output, resume=args.resume, address=args.address)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
