"""A :class:`SweepSpec` as Tune objects: search domains, the param space, ASHA, the progress table, trial size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .spec import CLOCK_TITLES, Param, SweepSpec


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


def resolved(spec: SweepSpec, changes: Mapping[str, Any] | None = None):
    """A trial's settings (:func:`sepo_ray.resolve.resolve_settings`): the task's run defaults, then the sweep's
    base config (the ``file`` layer) with ``changes``; ValueError names the value refused. Fields that are no
    setting (a custom trainable's own) are left to that trainable."""
    from sepo_ray.resolve import is_setting, resolve_settings
    from sepo_ray.settings import SEPO_SETTINGS
    from sepo_ray.tasks import get_task

    values = {k: v for k, v in {**spec.base_config, **(changes or {})}.items() if is_setting(k)}
    task = get_task(values.pop("task", SEPO_SETTINGS["task"].default))
    return resolve_settings(task, file=values)


def build_param_space(spec: SweepSpec, config_cls: type | None = None) -> dict:
    """Tune param_space: the resolved base settings (``SEPOConfig.from_settings(...).to_dict()``, a full config
    dict, when ``config_cls`` builds from settings), the base config's other fields as they are, and each searched
    field replaced by its Tune domain."""
    settings = resolved(spec)
    if hasattr(config_cls, "from_settings"):
        base = config_cls.from_settings(settings).to_dict()
    else:
        base = {**settings.values, **spec.base_config}
        if config_cls is not None:
            base = config_cls().update_from_dict(base).to_dict()
    for param in spec.search_space:
        base[param.field] = tune_domain(param)
    return base


def make_scheduler(spec: SweepSpec) -> Any:
    """Ray's ASHAScheduler on ``spec.metric`` by ``spec.scheduler.time_attr``."""
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


def shown_metrics(spec: SweepSpec) -> dict[str, str]:
    """Result key -> column title of the progress table (also what a trial's history keeps)."""
    return {
        "training_iteration": "iter",
        **{k: CLOCK_TITLES[k] for k in ("time_total_s", spec.scheduler.time_attr)},
        spec.metric: spec.metric.rsplit("/", 1)[-1],
        "sepo/kl": "kl",
        spec.select_metric: spec.select_metric.rsplit("/", 1)[-1],
        **{k: k.rsplit("/", 1)[-1] for k in spec.select_min},
    }


def progress_reporter(spec: SweepSpec) -> Any:
    """Tune's table: status, the searched values, reward, KL, the validation score and guards, time."""
    from ray.tune import CLIReporter

    return CLIReporter(
        metric_columns=shown_metrics(spec),
        parameter_columns={p: p for p in spec.searched_fields},
        metric=spec.metric,
        mode=spec.mode,
        max_report_frequency=15,
        sort_by_metric=True,
    )


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


def announce_trial_resources(trainable: Any, param_space: Mapping) -> None:
    """Print what one trial asks for, when the trainable says."""
    need = trial_resources(trainable, param_space)
    if need is not None:
        print(f"Each trial asks for {need['CPU']:g} CPU, {need['GPU']:g} GPU", flush=True)


def _is_domain(value: Any) -> bool:
    from ray.tune.search.sample import Domain

    return isinstance(value, Domain) or (isinstance(value, Mapping) and "grid_search" in value)
