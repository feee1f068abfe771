"""``sepo-ray bench [--only A,B] [--output FILE] [--seeds N] [--quick]`` (``python -m sepo_ray.bench``): run the
benchmarks of :mod:`sepo_ray.benchmarks`, print JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from sepo_ray.benchmarks import BENCHMARKS, QUICK_ENV, machine_info
from sepo_ray.runtime import jsonable, write_json
from sepo_ray.settings import parse_overrides


def run_benchmarks(argv: list[str] | None = None) -> dict:
    """Run the chosen entries (all by default) in registry order; print and return their results."""
    parser = argparse.ArgumentParser(prog="sepo-ray bench", description="Benchmarks, printed as JSON.")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (default: all)")
    parser.add_argument("--output", default=None, help="write the JSON here as well")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (fidelity: default 20)")
    parser.add_argument(
        "--quick", action="store_true", help=f"tiny sizes: a smoke run of every entry (or {QUICK_ENV}=1)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the benchmarks that run SEPO (iteration), repeatable")  # fmt: skip
    args = parser.parse_args(argv)
    args.settings = parse_overrides(args.set)
    names = list(BENCHMARKS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"--only: unknown benchmark(s) {unknown}; valid: {sorted(BENCHMARKS)}")
    torch.set_num_threads(1)
    results = {}
    for name in names:
        start = time.perf_counter()
        result = BENCHMARKS[name](args)
        results[name] = {**result, "machine": machine_info(), "wall_s": round(time.perf_counter() - start, 2)}
    print(json.dumps(jsonable(results), indent=2))
    if args.output:
        write_json(args.output, results)
    return results


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when the benchmarks ran, 2 for an unknown benchmark name (one line)."""
    try:
        run_benchmarks(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
