"""Running a sweep: check it against ``SEPOConfig``, start or join Ray, run (or restore) Tune, write sweep.json.

Ctrl-C: the first one asks Tune to stop gracefully (it saves the experiment state, the running trials stop
at their last report); a second one stops at once. Either way the cut trials are ``"interrupted"`` in
sweep.json, with the command that continues the sweep (``--resume``), and the CLI exits with 130.
"""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path
from typing import Any

from sepo_ray.runtime import init_ray, write_json

from .preflight import check_gpus, check_rewards, cluster_gpus, trial_gpu_requests
from .report import SAMPLED_CALLS, VALIDATION_CALLS, format_report, interrupted_line, sweep_report
from .space import (
    announce_trial_resources,
    build_param_space,
    make_scheduler,
    progress_reporter,
    shown_metrics,
)
from .spec import SweepError, SweepSpec

#: statuses of a trial that Tune has not finished (restored ones continue)
UNFINISHED = ("PENDING", "RUNNING", "PAUSED")


def default_trainable() -> tuple[Any, type]:
    """(SEPO, SEPOConfig) from sepo_ray.rllib."""
    from sepo_ray.rllib import SEPO, SEPOConfig

    return SEPO, SEPOConfig


def check_against_config(spec: SweepSpec, config_cls: type) -> None:
    """Resolve and validate the base settings, and the base settings with each searched value (grid/choice values,
    range ends), so that a value SEPOConfig refuses (e.g. T below kl_steps, G = 1 under GRPO) stops the sweep
    before any trial starts. Raises SweepError naming the key and the value."""
    from .space import resolved

    def validate(changes: dict, where: str) -> None:
        try:
            config_cls.from_settings(resolved(spec, changes)).validate()
        except ValueError as err:
            raise SweepError(f"{where}: {err}") from None

    validate({}, "base_config")
    for param in spec.search_space:
        for value in param.args:
            validate({param.field: value}, f"search_space.{param.field}={value!r}")


def history_keys(spec: SweepSpec) -> set[str]:
    """What a trial's history keeps: the progress table's metrics, the stop keys and the oracle calls it spent,
    training and validation (what the tuning's cost charges, whatever the scheduler's clock)."""
    return set(shown_metrics(spec)) | set(spec.stop) | {SAMPLED_CALLS, VALIDATION_CALLS}


def _history(df: Any, wanted: set[str]) -> list[dict]:
    if df is None or not len(df):
        return []
    return df[[c for c in df.columns if c in wanted]].to_dict("records")


def _error_text(error: Any) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"


def _analysis_records(analysis: Any, spec: SweepSpec) -> list[dict]:
    """Trial records (see summarize_trial) of an ExperimentAnalysis, with ``finished``: whether Tune ended
    the trial itself (its last result says ``done``: ASHA, a stop threshold, max_t), and ``checkpoint``."""
    from ray.tune import ResultGrid

    wanted = history_keys(spec)
    frames = analysis.trial_dataframes
    records = []
    for trial in analysis.trials:
        config = trial.config or {}
        error = ResultGrid._populate_exception(trial) if trial.status == "ERROR" else None
        records.append(
            {
                "trial_id": trial.trial_id,
                "status": trial.status,
                "config": {k: config.get(k) for k in spec.searched_fields},
                "history": _history(frames.get(trial.trial_id), wanted),
                "error": _error_text(error),
                "finished": trial.status == "ERROR" or bool((trial.last_result or {}).get("done")),
                "checkpoint": trial.checkpoint is not None,
            }
        )
    return records


def _trial_records(grid: Any, spec: SweepSpec) -> list[dict]:
    """Trial records from a Tune ResultGrid, trials that never reported included.

    Tune's Trial objects carry the status and last result; the public Result objects are the fallback when
    they are not reachable.
    """
    analysis = getattr(grid, "_experiment_analysis", None)
    if getattr(analysis, "trials", None) is not None:
        return _analysis_records(analysis, spec)
    wanted = history_keys(spec)
    records = []
    for result in grid:
        metrics, config = result.metrics or {}, result.config or {}
        records.append(
            {
                "trial_id": metrics.get("trial_id") or Path(str(result.path)).name,
                "status": "ERROR" if result.error else "TERMINATED",
                "config": {k: config.get(k) for k in spec.searched_fields},
                "history": _history(result.metrics_dataframe, wanted),
                "error": _error_text(result.error),
                "finished": bool(result.error) or bool(metrics.get("done", True)),
                "checkpoint": result.checkpoint is not None,
            }
        )
    return records


def _saved_trial_records(experiment_path: str, spec: SweepSpec) -> list[dict]:
    """Trial records from the experiment state Tune last saved ([] if none): what is left when ``fit``
    raised KeyboardInterrupt and returned nothing."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(experiment_path)
    except Exception:  # noqa: BLE001 - nothing saved yet (interrupted while starting)
        return []
    return _analysis_records(analysis, spec)


def mark_interrupted(records: list[dict], resume_command: str) -> list[dict]:
    """The records with each trial that Tune did not finish (cut by the interrupt: TERMINATED without a
    ``done`` result, or still PENDING / RUNNING / PAUSED) as ``"interrupted"``, with a resume hint."""
    out = []
    for record in records:
        cut = record["status"] in UNFINISHED or (record["status"] == "TERMINATED" and not record["finished"])
        if cut:
            start = (
                "from its last checkpoint" if record.get("checkpoint") else "from the start (no checkpoint)"
            )
            record = {
                **record,
                "status": "interrupted",
                "resume_hint": f"{resume_command}  # continues {start}",
            }
        out.append(record)
    return out


def resume_command(sweep_file: str | os.PathLike | None, output: Path, address: str | None = None) -> str:
    """The command that continues this sweep."""
    words = ["python", "-m", "sepo_ray.sweep", str(sweep_file or "FILE"), "--output", str(output), "--resume"]
    if address:
        words += ["--address", address]
    return shlex.join(words)


class CtrlC:
    """SIGINT during ``Tuner.fit``, ours rather than Tune's: the first one is recorded and handed to Tune's
    graceful stop (Tune registers the same handler for SIGUSR1: it saves the experiment state and ``fit``
    returns); a second one, or one before Tune's handler is in place, raises KeyboardInterrupt at once.

    Tune's own SIGINT handler is kept out (``TUNE_DISABLE_SIGINT_HANDLER``) and both handlers are restored on
    exit (Tune leaves its own installed after ``fit``). Outside the main thread nothing is installed.
    """

    def __init__(self) -> None:
        self.count = 0
        self._relay = False
        self._saved: dict | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if self.count == 1 and self._relay and callable(tune_stop) and tune_stop is not self._saved["usr1"]:
            tune_stop(signum, frame)
            return
        raise KeyboardInterrupt

    @property
    def interrupted(self) -> bool:
        return self.count > 0

    def __enter__(self) -> CtrlC:
        env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        try:
            saved = {"int": signal.signal(signal.SIGINT, self), "env": env}
        except ValueError:  # not the main thread: Tune does not catch signals there either
            return self
        self._relay = env in (None, "", "0")  # a user who disabled Tune's handler wants an immediate stop
        saved["usr1"] = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        self._saved = saved
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is None:
            return
        signal.signal(signal.SIGINT, self._saved["int"])
        if self._saved["usr1"] is not None:
            signal.signal(signal.SIGUSR1, self._saved["usr1"])
        if self._saved["env"] is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._saved["env"]
        self._saved = None


def _num_alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _make_tuner(spec: SweepSpec, trainable: Any, param_space: dict, storage_path: str, verbose: int) -> Any:
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from sepo_ray.curves import sweep_callback

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
            callbacks=[sweep_callback()],  # each trial's curves as `run` writes its own (sepo_ray.curves)
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
    sweep_file: str | os.PathLike | None = None,
    resume_hint: str | None = None,
) -> dict:
    """Run (or with ``resume`` continue) the sweep; write ``output/sweep.json``; return its content.

    ``trainable`` defaults to ``sepo_ray.rllib.SEPO`` with ``config_cls`` SEPOConfig; Tune's experiment
    lives in ``storage_path/<name>`` (``storage_path`` defaults to ``output``). Ray: ``address`` (or
    ``RAY_ADDRESS``) is joined, else a local runtime sized by ``spec.resources`` is started and shut down at
    the end; an already initialised Ray is used as is. ``verbose``: 0 silent, 1 Tune's status table (every
    15 s), 2 also a line per trial result. Before Tune starts: every reward spec, and each trial's GPUs
    against the cluster's. Ctrl-C (see :class:`CtrlC`): the report has ``interrupted`` true, the cut trials
    are ``"interrupted"``, and ``resume_command`` (naming ``sweep_file``, or ``resume_hint`` for a sweep that a
    larger command runs) continues the sweep.
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
    check_rewards(spec)

    started_ray = init_ray(
        num_cpus=spec.resources.get("num_cpus"),
        num_gpus=spec.resources.get("num_gpus"),
        address=address,
        log_to_driver=True,  # a trial's own output and tracebacks show in the sweep's terminal
        announce=verbose > 0,
    )
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the table reporter with our metric columns
    ctrl_c, grid = CtrlC(), None
    try:
        param_space = build_param_space(spec, config_cls)
        check_gpus(trial_gpu_requests(spec, trainable, param_space), *cluster_gpus())
        if "://" not in storage_path and _num_alive_nodes() > 1:
            print(
                f"warning: storage_path {storage_path} is a local directory on a multi-node cluster; trials "
                "on other nodes cannot write checkpoints there. Set storage_path to s3://, gs:// or a shared "
                "mount.",
                flush=True,
            )
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
        with ctrl_c:
            try:
                grid = tuner.fit()
            except KeyboardInterrupt:  # a second Ctrl-C: Tune saved nothing more, read what it last saved
                ctrl_c.count = max(ctrl_c.count, 1)
        records = (
            _trial_records(grid, spec) if grid is not None else _saved_trial_records(experiment_path, spec)
        )
        command = (resume_hint or resume_command(sweep_file, output, address)) if ctrl_c.interrupted else None
        if command:
            records = mark_interrupted(records, command)
        report = sweep_report(spec, records, experiment_path, resume_command=command)
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
    if report["interrupted"]:
        print(interrupted_line(report), flush=True)
    elif report["num_terminated"] < report["num_trials"]:
        print(f"Some trials did not finish: continue with --resume --output {output}", flush=True)
    return report
