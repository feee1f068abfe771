"""``sepo-ray <command>``: the one command line. Each command is a module of this package with a ``main(argv)``,
imported only when asked for; ``python -m sepo_ray.<command>`` runs the same ``main``."""

from __future__ import annotations

import importlib
import sys

#: command -> (module, one line)
COMMANDS = {
    "run": ("sepo_ray.cli.run", "fine-tune a task's generator with SEPO (before/after metrics, checkpoints)"),
    "evaluate": ("sepo_ray.cli.evaluate", "the task's metrics table of generators over seeds, plot, samples"),
    "compare": ("sepo_ray.cli.compare", "every method at one oracle budget: the paper's Table 2"),
    "frontier": ("sepo_ray.cli.compare", "every method against the oracle calls spent"),
    "sweep": ("sepo_ray.cli.sweep", "a Ray Tune sweep described in YAML"),
    "bench": ("sepo_ray.cli.bench", "benchmarks, printed as JSON"),
    "pretrain": ("sepo_ray.cli.pretrain", "(re)build a task's pretrained artifacts"),
    "design": (
        "sepo_ray.cli.design",
        "designs to order: generated, scored, constrained, ranked (FASTA, Parquet)",
    ),
    "export": (
        "sepo_ray.cli.export",
        "a run's generator as a self-describing model folder with a model card",
    ),
}


def usage() -> str:
    lines = [
        "usage: sepo-ray <command> [options]   (sepo-ray <command> --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sepo-ray: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    run = getattr(module, f"{name}_main", module.main)  # compare and frontier share a module
    return int(run(rest) or 0)
