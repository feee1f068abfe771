"""``sepo-ray sweep FILE [--output DIR] [--resume] [--address A] [--dry-run]`` (``python -m sepo_ray.sweep``):
a Ray Tune sweep of SEPO hyperparameters described in YAML (:mod:`sepo_ray.sweeps`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sepo_ray.sweeps.preflight import available_gpus, check_gpus, check_rewards, trial_gpu_requests
from sepo_ray.sweeps.runner import check_against_config, default_trainable, resume_command, run_sweep
from sepo_ray.sweeps.space import announce_trial_resources, build_param_space
from sepo_ray.sweeps.spec import SweepError, SweepSpec, load_sweep_spec

#: the exit status of a sweep stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
EXIT_INTERRUPTED = 130


def dry_run(spec: SweepSpec, address: str | None = None) -> None:
    """What can be checked without starting anything: SEPOConfig's rules on each searched value, every reward
    spec, and each trial's GPUs against what a run would have (the cluster's only when ``address`` or
    ``RAY_ADDRESS`` is given). Raises SweepError naming the key."""
    for p in spec.search_space:
        print(f"  {p.field}: {p.kind} {list(p.args)}")
    trainable, config_cls = default_trainable()
    check_against_config(spec, config_cls)
    check_rewards(spec)
    param_space = build_param_space(spec, config_cls)
    announce_trial_resources(trainable, param_space)
    requests = trial_gpu_requests(spec, trainable, param_space)
    if requests:
        available, source = available_gpus(spec, address)
        check_gpus(requests, available, source)
        print(f"GPUs: a trial asks for at most {max(n for _, n in requests):g}; {source}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Validate the sweep file, print the plan, run it (or only check it with ``--dry-run``).

    Exit status: 0 done, 2 a file or sweep that cannot start (one line on stderr), 130 stopped by Ctrl-C.
    """
    parser = argparse.ArgumentParser(
        prog="sepo-ray sweep", description="Ray Tune sweep of SEPO hyperparameters (YAML)."
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
    print(spec.describe(), flush=True)
    output = Path(args.output) if args.output else Path("sweeps") / spec.name
    try:
        if args.dry_run:
            dry_run(spec, args.address)
            return 0
        report = run_sweep(spec, output, resume=args.resume, address=args.address, sweep_file=args.config)
    except SweepError as err:  # a sweep that cannot start as asked
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside Tuner.fit (start-up, restore, shut-down): run_sweep has no report
        command = resume_command(args.config, Path(output).expanduser().resolve(), args.address)
        print(
            f"Sweep interrupted outside Tune's run; if Tune had started it, continue with: {command}",
            flush=True,
        )
        return EXIT_INTERRUPTED
    return EXIT_INTERRUPTED if report["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
