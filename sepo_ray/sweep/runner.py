"""Running a sweep: check it against ``SEPOConfig``, start or join Ray, run (or restore) Tune, write sweep.json."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sepo_ray.runtime import init_ray, write_json

from .report import format_report, sweep_report
from .space import (
    announce_trial_resources,
    build_param_space,
    make_scheduler,
    progress_reporter,
    shown_metrics,
)
from .spec import SweepError, SweepSpec


def default_trainable() -> tuple[Any, type]:
    """(SEPO, SEPOConfig) from sepo_ray.rllib."""
    from sepo_ray.rllib import SEPO, SEPOConfig

    return SEPO, SEPOConfig


def check_against_config(spec: SweepSpec, config_cls: type) -> None:
    """Run ``config_cls().update_from_dict(...).validate()`` on the base config and on the base config with
    each searched value (grid/choice values, range ends), so that a value SEPOConfig refuses (e.g. T below
    kl_steps, G = 1 under GRPO) stops the sweep before any trial starts. Raises SweepError naming the key
    and the value."""

    def validate(values: dict, where: str) -> None:
        try:
            config_cls().update_from_dict(values).validate()
        except ValueError as err:
            raise SweepError(f"{where}: {err}") from None

    validate(dict(spec.base_config), "base_config")
    for param in spec.search_space:
        for value in param.args:
            validate({**spec.base_config, param.field: value}, f"search_space.{param.field}={value!r}")


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
    wanted = set(shown_metrics(spec)) | set(spec.stop)
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


def _num_alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _make_tuner(spec: SweepSpec, trainable: Any, param_space: dict, storage_path: str, verbose: int) -> Any:
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return tune.Tuner(
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
    lives in ``storage_path/<name>`` (``storage_path`` defaults to ``output``). Ray: ``address`` (or
    ``RAY_ADDRESS``) is joined, else a local runtime sized by ``spec.resources`` is started and shut down at
    the end; an already initialised Ray is used as is. ``verbose``: 0 silent, 1 Tune's status table (every
    15 s), 2 also a line per trial result.
    """
    from ray import tune

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

    started_ray = init_ray(
        num_cpus=spec.resources.get("num_cpus"),
        num_gpus=spec.resources.get("num_gpus"),
        address=address,
        log_to_driver=True,  # a trial's own output and tracebacks show in the sweep's terminal
        announce=verbose > 0,
    )
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
            announce_trial_resources(trainable, param_space)
            tuner = _make_tuner(spec, trainable, param_space, storage_path, verbose)
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
    path = write_json(output / "sweep.json", report)
    print(format_report(report), flush=True)
    print(f"Wrote {path}", flush=True)
    if report["num_terminated"] < report["num_trials"]:
        print(f"Some trials did not finish: continue with --resume --output {output}", flush=True)
    return report
