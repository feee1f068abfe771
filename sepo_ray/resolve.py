"""Settings resolved once: every value a run uses and the layer it came from, in one fixed order.

:func:`resolve_settings` is the only place where settings are merged. Layers, each overriding the ones before:

==============  ==========================================================================================
``default``     the schema (:mod:`sepo_ray.settings`)
``task``        the task's run defaults (``Task.default_settings``); an unset reward is the task's own
``benchmark``   comparisons only: the benchmark's reward in place of a guarded one (``Task.benchmark_reward_pin``)
``method``      comparisons only: what makes a run this method (:mod:`sepo_ray.methods`)
``tuned``       comparisons only: values chosen by equal tuning or fixed by ``--configs``
``file``        a sweep file's ``base_config``
``--set``       the command line (``--set KEY=VALUE``, ``--seed``, ``--reward``)
``resume``      a resumed run's recorded values; only settings marked ``resumable`` may change then
==============  ==========================================================================================

Every value is checked against the schema as it enters (the error names its layer), RLlib attributes outside
the schema must exist and be finite and non-negative, settings SEPO derives may not be set, and the
cross-field rules (:func:`check_rules`) run on the result. All of this happens before Ray starts.
``SEPOConfig.from_settings`` builds the RLlib config from a :class:`Settings`;
``python -m sepo_ray.run TASK --show-settings`` prints :meth:`Settings.table`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sepo_ray.settings import SETTINGS

LAYERS = ("default", "task", "benchmark", "method", "tuned", "file", "--set", "resume")
#: RLlib settings SEPO derives from its own (refused on the command line, named with what they derive from)
DERIVED = {
    "num_envs_per_env_runner": "prompts_per_batch * group_size / num_env_runners",
    "rollout_fragment_length": "one step per episode",
    "train_batch_size_per_learner": "prompts_per_batch * group_size / num_learners",
    "train_batch_size": "prompts_per_batch * group_size",
    "minibatch_size": "the whole batch (GRPO averages over whole groups)",
    "env_config": "the task and reward settings",
    "env": "the task",
    "model_config": "the SEPO settings",
}
#: vocabularies larger than this need token proposals (``neighbour_tokens``): all m - 1 would not fit
MAX_ALL_TOKENS = 256


@dataclass(frozen=True)
class Settings:
    """Every setting of one run: ``values[name]`` and ``sources[name]`` (the layer that set it)."""

    task: str
    values: Mapping[str, Any]
    sources: Mapping[str, str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def table(self) -> str:
        """One line per setting: name, value, source (schema order, then RLlib attributes set by name)."""
        width = max(len(n) for n in self.values)
        lines = [f"{'setting':<{width}}  {'value':<24}  source"]
        for name, value in self.values.items():
            lines.append(f"{name:<{width}}  {value!r:<24}  {self.sources[name]}")
        return "\n".join(lines)


_NO_SUCH = object()


@functools.cache
def _algorithm_config():
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    return AlgorithmConfig()


def _rllib_default(name: str) -> Any:
    """The default of an RLlib ``AlgorithmConfig`` attribute, or ``_NO_SUCH`` when there is no such setting."""
    config = _algorithm_config()
    if name.startswith("_") or not hasattr(config, name) or callable(getattr(config, name)):
        return _NO_SUCH
    return getattr(config, name)


def is_setting(name: str) -> bool:
    """Whether ``name`` is a setting: the schema's, or an RLlib ``AlgorithmConfig`` attribute."""
    return name in SETTINGS or name in DERIVED or _rllib_default(name) is not _NO_SUCH


def why_invalid(name: str, value: Any) -> str | None:
    """None when ``value`` may be given for ``name``, else why not (schema rules; RLlib attributes: the type of
    their default, CPU and GPU counts also fractions, finite and non-negative numbers; derived settings never)."""
    if name in DERIVED:
        return f"is derived by SEPO from {DERIVED[name]}; set that instead"
    if name in SETTINGS:
        return SETTINGS[name].why_invalid(value)
    default = _rllib_default(name)
    if default is _NO_SUCH:
        return (
            "not a config field; SEPO fields: "
            f"{', '.join(sorted(n for n in SETTINGS if n != 'task'))}; or an RLlib AlgorithmConfig attribute "
            "(num_cpus_per_env_runner, ...)"
        )
    if value is None or default is None:
        return None
    if isinstance(default, bool) or isinstance(value, bool):
        return (
            None
            if isinstance(value, bool) and isinstance(default, bool)
            else f"takes {type(default).__name__}"
        )
    if isinstance(default, (int, float)):
        fractional = "cpus" in name or "gpus" in name  # resources may be fractions whatever their default
        if not isinstance(value, (int, float)) or (
            isinstance(default, int) and not isinstance(value, int) and not fractional
        ):
            return f"takes {'integers' if isinstance(default, int) else 'numbers'}, got {value!r}"
        if not math.isfinite(value):
            return f"takes finite numbers, got {value!r}"
        if value < 0:
            return f"must be >= 0, got {value!r}"
        return None
    if isinstance(default, str) and not isinstance(value, str):
        return f"takes a string, got {value!r}"
    return None


def _checked(values: Mapping[str, Any], label: Callable[[str], str]) -> dict[str, Any]:
    """``values`` when every one may be given; ValueError ``"<label>=<value>: <why>"`` (a flag's label, e.g.
    ``--seed -1``, already holds its value) for the first that may not."""
    for name, value in values.items():
        where = label(name)
        where = where if where.startswith("--") and not where.startswith("--set") else f"{where}={value!r}"
        if name == "task":
            raise ValueError(f"{label(name)}=...: the task is the command's first argument, not a setting")
        why = why_invalid(name, value)
        if why is not None:
            raise ValueError(f"{where}: {why}")
    return dict(values)


def machine_threads() -> int:
    """The CPUs this process may run on (what ``torch_threads`` 0 stands for)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_settings(
    task,
    *,
    benchmark: bool = False,
    method: Mapping[str, Any] | None = None,
    tuned: Mapping[str, Any] | None = None,
    file: Mapping[str, Any] | None = None,
    cli: Mapping[str, Any] | None = None,
    cli_flags: Mapping[str, str] | None = None,
    recorded: Mapping[str, Any] | None = None,
    recorded_sources: Mapping[str, str] | None = None,
) -> Settings:
    """Every setting of a run of ``task`` (a :class:`~sepo_ray.tasks.Task`), layer by layer (module docstring).

    ``cli``: the command line's values (``cli_flags`` names the flag that gave a value, default ``--set``; it is
    the value's source).
    ``recorded`` (+ ``recorded_sources``): a resumed run's values; then ``cli`` may only repeat them or change a
    resumable setting. ValueError (one line, naming the layer and the setting) for anything refused.
    """
    flags = dict(cli_flags or {})

    def cli_label(name: str) -> str:
        return f"{flags[name]} {(cli or {})[name]}" if name in flags else f"--set {name}"

    if recorded is not None:
        values, sources = _resumed(task, recorded, recorded_sources or {}, cli or {}, cli_label)
    else:
        values = {name: s.default for name, s in SETTINGS.items()}
        sources = dict.fromkeys(values, "default")
        values["task"], sources["task"] = task.spec or task.name, "task"
        layers = [
            ("task", dict(task.default_settings), lambda n: f"task {task.name} default {n}"),
            ("benchmark", task.benchmark_reward_pin() if benchmark else {}, lambda n: f"benchmark {n}"),
            ("method", dict(method or {}), lambda n: f"method setting {n}"),
            ("tuned", dict(tuned or {}), lambda n: f"tuned {n}"),
            ("file", dict(file or {}), lambda n: f"file {n}"),
            ("--set", dict(cli or {}), cli_label),
        ]
        for layer, given, label in layers:
            for name, value in _checked(given, label).items():
                source = (
                    f"task {task.name}"
                    if layer == "task"
                    else flags.get(name, layer)
                    if layer == "--set"
                    else layer
                )
                values[name], sources[name] = value, source
        if values["reward"] is None:
            values["reward"], sources["reward"] = task.default_reward, f"task {task.name} (default reward)"
        if not values["torch_threads"]:  # pinned: the same count in every process, recorded with the run
            values["torch_threads"] = machine_threads()
            sources["torch_threads"] = f"{sources['torch_threads']}: 0 = this machine's CPUs"
    where = lambda n: f"{n}={values[n]!r} ({sources[n]})"  # noqa: E731
    check_rules(values, task, where)
    if (
        values["max_staleness"] and not values["num_env_runners"]
    ):  # the driver's rule (runners' configs have 0)
        raise ValueError(f"{where('max_staleness')}: an asynchronous loop needs rollout workers that sample beside "
                         "the learner: set num_env_runners >= 1")  # fmt: skip
    return Settings(task.name, values, sources)


def _resumed(task, recorded, recorded_sources, cli, label) -> tuple[dict, dict]:
    """A resumed run's values: as recorded, with the resumable settings the command line changes."""
    values = {name: s.default for name, s in SETTINGS.items()}
    sources = dict.fromkeys(values, "default")
    for name, value in recorded.items():
        values[name], sources[name] = value, recorded_sources.get(name, "resume")
    values["task"] = task.spec or task.name
    _checked(cli, label)
    refused = []
    for name, value in cli.items():
        if values.get(name) == value:
            continue
        if name in SETTINGS and SETTINGS[name].resumable:
            values[name], sources[name] = value, "--set (on resume)"
        else:
            refused.append(name)
    if refused:
        was = ", ".join(f"{n}={values.get(n)!r}" for n in refused)
        allowed = ", ".join(sorted(n for n, s in SETTINGS.items() if s.resumable))
        raise ValueError(
            f"{', '.join(label(n) for n in refused)}: this run was trained with {was}; changing it would not continue "
            f"the same run (start a new run elsewhere; a resume may change only {allowed})"
        )
    return values, sources


def generator_spec(values: Any) -> str | None:
    """The generator ``Task.build_denoiser`` loads for a run's values (a mapping or a config): ``generator``, with
    ``#ema`` appended when ``generator_weights`` asks for a checkpoint's EMA copy; None: the task's own."""
    get = values.get if isinstance(values, Mapping) else lambda k, d=None: getattr(values, k, d)
    generator = get("generator")
    if generator is None:
        return None
    return f"{generator}#ema" if get("generator_weights", "model") == "ema" else str(generator)


def changed_on_resume(settings: Settings) -> dict[str, Any]:
    """The resumable settings a resume changed (recorded in the run's history of resumes)."""
    return {n: settings[n] for n, s in settings.sources.items() if s == "--set (on resume)"}


def check_rules(values: Mapping[str, Any], task, where: Callable[[str], str]) -> None:
    """SEPO's cross-field rules on a whole set of values; ValueError ``"<where(field)>: <why>"`` for the first
    broken one (``where`` names the field and its source)."""

    def bad(field: str, why: str):
        raise ValueError(f"{where(field)}: {why}")

    v = values
    if v.get("generator_weights", "model") == "ema" and not str(v["generator"] or "").endswith(".ckpt"):
        bad(
            "generator_weights", "takes the EMA copy of a training checkpoint: name a .ckpt file as generator"
        )
    if v["kl_steps"] > v["denoise_steps"]:
        bad(
            "kl_steps",
            f"cannot exceed denoise_steps={v['denoise_steps']} (steps are sampled without replacement)",
        )
    if v["group_size"] < 2 and v["advantage"] == "grpo":
        bad("group_size", "GRPO standardises rewards within a group: group_size must be >= 2")
    if v["neighbour_positions"] is not None and v["neighbour_positions"] > task.length:
        bad("neighbour_positions", f"must be None (all positions) or an integer in 1..L={task.length}")
    if task.prompt_length and v["corrector_steps"]:
        bad("corrector_steps", "must be 0 for a task with prompts (the corrector would re-mask the prompt)")
    if v["prompts_file"] is not None:
        if not task.prompt_length:
            bad("prompts_file", f"task {task.name!r} takes no prompts")
        from sepo_ray.tasks import read_prompt_file

        try:
            task.encode_prompts(read_prompt_file(v["prompts_file"]))
        except ValueError as e:
            bad("prompts_file", str(e))
    if v["neighbour_tokens"] is None and task.num_tokens - 1 > MAX_ALL_TOKENS:
        bad(
            "neighbour_tokens",
            f"SNIS over all m-1 = {task.num_tokens - 1} tokens per position costs N*K*(m-1)*M denoiser forwards; "
            f"set neighbour_tokens (J proposed tokens per position, e.g. 8) for a vocabulary over "
            f"{MAX_ALL_TOKENS + 1} tokens",
        )
    if v["neighbour_tokens"] is not None and v["neighbour_tokens"] > task.num_tokens - 1:
        bad("neighbour_tokens", f"must be None (all m-1) or an integer in 1..m-1={task.num_tokens - 1}")
    if v["prompts_per_batch"] % max(1, int(v["num_env_runners"])):
        bad(
            "prompts_per_batch",
            f"must be divisible by num_env_runners={v['num_env_runners']} so that every rollout worker samples "
            "whole GRPO groups",
        )
    if (v["prompts_per_batch"] * v["group_size"]) % max(1, int(v["num_learners"])):
        bad("prompts_per_batch", f"B * G must be divisible by num_learners={v['num_learners']}")
