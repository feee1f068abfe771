"""``sepo-ray export RUN --output DIR`` (``python -m sepo_ray.export``): a run's generator as a self-describing model
folder (weights, ``config.json``, a model card) that ``--set generator=DIR``, ``evaluate --model DIR`` and
``design --model DIR`` load (:mod:`sepo_ray.modelcard`)."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from sepo_ray.modelcard import export_run

    p = argparse.ArgumentParser(
        prog="sepo-ray export", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    p.add_argument("run", help="a run folder (written by sepo-ray run)")
    p.add_argument("--output", required=True, help="the model folder to write (must not exist)")
    p.add_argument(
        "--checkpoint", default=None, help="iter_NNNN to export (default: the run's final checkpoint)"
    )
    args = p.parse_args(argv)
    try:
        out = export_run(args.run, args.output, args.checkpoint)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.run} -> {out} (generator.safetensors, config.json, README.md)", flush=True)
    return 0
