"""Ray Tune sweeps over SEPO hyperparameters, described in YAML.

    sepo-ray sweep tune_configs/cpu_small.yaml [--output DIR] [--resume] [--address A] [--dry-run]

runs a Tune ``Tuner`` over the ``SEPO`` algorithm (an RLlib ``Algorithm`` is a Tune ``Trainable``), shows
Tune's progress table, writes ``DIR/sweep.json`` (one row per trial: its sampled config, metrics, status)
and prints the best config by the task's validation score (``sepo/validation_score``), among the trials that pass
the realism guards (``select_min``, e.g. ``sepo/validation_realism``). Before anything starts (``--dry-run``, and
again before Tune runs) every reward spec is checked and each trial's GPUs must fit the cluster. A sweep stopped
part-way (Ctrl-C, a lost node, an errored trial) continues with ``--resume`` (``Tuner.restore``); after Ctrl-C
sweep.json marks the cut trials ``"interrupted"``, the last line gives the command, and the exit status is 130.

| module | concern |
|---|---|
| ``spec`` | the sweep file's keys (its docstring shows every one), ``SweepSpec``, parsing and validation |
| ``space`` | Tune objects: search domains, the param space, the ASHA scheduler, the progress table |
| ``preflight`` | checks before anything starts: reward specs, each trial's GPUs against the cluster's |
| ``report`` | trial rows, ``select_best``, the content of ``sweep.json`` and its text (pure) |
| ``runner`` | ``run_sweep``: Ray start-up, Tune's ``Tuner`` (or its restore), Ctrl-C, writing ``sweep.json`` |
"""

from .preflight import available_gpus, check_gpus, check_rewards, trial_gpu_requests
from .report import asha_rungs, format_report, interrupted_line, select_best, summarize_trial, sweep_report
from .runner import check_against_config, default_trainable, resume_command, run_sweep
from .space import build_param_space, make_scheduler, progress_reporter, trial_resources, tune_domain
from .spec import (
    DEFAULT_METRIC,
    DEFAULT_SELECT_METRIC,
    FILE_SETTINGS,
    Param,
    SchedulerSpec,
    SweepError,
    SweepSpec,
    load_sweep_spec,
    parse_sweep_spec,
    read_sweep_yaml,
    sepo_config_fields,
)

__all__ = [
    "DEFAULT_METRIC",
    "DEFAULT_SELECT_METRIC",
    "FILE_SETTINGS",
    "Param",
    "SchedulerSpec",
    "SweepError",
    "SweepSpec",
    "asha_rungs",
    "available_gpus",
    "build_param_space",
    "check_against_config",
    "check_gpus",
    "check_rewards",
    "default_trainable",
    "format_report",
    "interrupted_line",
    "load_sweep_spec",
    "make_scheduler",
    "parse_sweep_spec",
    "progress_reporter",
    "read_sweep_yaml",
    "resume_command",
    "run_sweep",
    "select_best",
    "sepo_config_fields",
    "summarize_trial",
    "sweep_report",
    "trial_gpu_requests",
    "trial_resources",
    "tune_domain",
]
