"""``python -m sepo_ray.sweep FILE [--output DIR] [--resume] [--address A] [--dry-run]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .runner import check_against_config, default_trainable, run_sweep
from .space import announce_trial_resources, build_param_space
from .spec import SweepError, load_sweep_spec


def main(argv: Sequence[str] | None = None) -> int:
    """Validate the sweep file, print the plan, run it (or only check it with ``--dry-run``); 2 on a bad file."""
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
    print(spec.describe(), flush=True)
    try:
        if args.dry_run:
            for p in spec.search_space:
                print(f"  {p.field}: {p.kind} {list(p.args)}")
            trainable, config_cls = default_trainable()
            check_against_config(spec, config_cls)
            announce_trial_resources(trainable, build_param_space(spec, config_cls))
            return 0
        output = Path(args.output) if args.output else Path("sweeps") / spec.name
        run_sweep(spec, output, resume=args.resume, address=args.address)
    except SweepError as err:  # a sweep that cannot start as asked
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
