"""``sepo-ray run TASK`` (``python -m sepo_ray.run TASK``): fine-tune a task's pretrained generator with SEPO and
report before/after metrics.

Joins a running Ray cluster when there is one (``RAY_ADDRESS`` is set, as under ``ray job submit``), else
starts a local one. Writes ``DIR/result.json`` after every iteration and checkpoints under ``DIR/checkpoints/``;
``--resume`` continues from the last checkpoint with the history intact. ``--show-settings`` prints every
setting, its value and where it came from, and exits. Exit status: 0 done, 2 refused input (one line, before Ray
starts), 3 a failed reward or a diverged run (the last checkpoint stays intact), 130 interrupted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from sepo_ray.settings import SEPO_SETTINGS, parse_overrides

DEFAULT_TASK = SEPO_SETTINGS["task"].default


def tasks_epilog() -> str:
    from sepo_ray.tasks import available_tasks, get_task

    lines = ["installed tasks (the entry-point group sepo_ray.tasks; or give module:TaskClass):"]
    for name in available_tasks():
        try:
            lines.append(f"  {name:<12} {get_task(name).description}")
        except ValueError as e:
            lines.append(f"  {name:<12} (broken: {e})")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="sepo-ray run",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog=tasks_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "task", nargs="?", default=DEFAULT_TASK, help=f"task name (default {DEFAULT_TASK}; see below)"
    )
    p.add_argument(
        "--iterations", type=int, default=None, help="training iterations (total; default: the task's)"
    )
    p.add_argument("--output", default=None, help="run folder (default runs/<task>-<time>)")
    p.add_argument(
        "--reward", default=None, help="reward 'module:function' or oracle name (default: the task's)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, repeatable")
    p.add_argument(
        "--seed", type=int, default=None, help="training seed (default 0; a resumed run keeps its own)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its last checkpoint"
    )
    p.add_argument("--eval-samples", type=int, default=256, help="sequences for the before/after metrics")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after metrics")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray runtime (default: all)")
    p.add_argument(
        "--show-settings", action="store_true", help="print every setting and its source, then exit"
    )
    args = p.parse_args(argv)
    for flag, value in (("--iterations", args.iterations), ("--eval-samples", args.eval_samples),
                        ("--num-cpus", args.num_cpus)):  # fmt: skip
        if value is not None and value < 1:
            p.error(f"{flag} must be >= 1, got {value}")
    if args.resume and not args.output:
        p.error("--resume needs --output DIR of the run to continue")
    return args


def command_line_settings(args) -> tuple[dict, dict]:
    """(values, flag of each) the command line gives: ``--set`` items, ``--seed``, ``--reward``."""
    cli, labels = parse_overrides(args.set), {}
    for name, value in (("seed", args.seed), ("reward", args.reward)):
        if value is None:
            continue
        if name in cli:
            raise ValueError(f"--{name} and --set {name}=: one setting, given twice; give one of them")
        cli[name], labels[name] = value, f"--{name}"
    return cli, labels


def main(argv=None) -> int:
    from sepo_ray.oracles.pool import RewardError
    from sepo_ray.rundir import read_record
    from sepo_ray.tasks import get_task
    from sepo_ray.training import DivergedError, run_settings, train

    args = parse_args(argv)
    out = Path(args.output or f"runs/{args.task}-{time.strftime('%Y%m%d-%H%M%S')}")
    iterations = args.iterations
    try:
        task = get_task(args.task)
        cli, labels = command_line_settings(args)
        settings, previous = run_settings(task, out, args.resume, cli, labels)
        if args.show_settings:
            print(settings.table())
            return 0
        iterations = iterations or int(task.default_iterations)
        record = train(
            task, out, iterations, settings, previous, args.eval_samples, not args.no_eval, args.num_cpus
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RewardError, DivergedError) as e:
        record = read_record(out) or {}
        last = out / record["final_checkpoint"] if record.get("final_checkpoint") else "none yet"
        print(f"error: {e}\nlast checkpoint (intact): {last}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        record = read_record(out) if (out / "result.json").is_file() else None
        if not record or not record.get("history"):
            print("\ninterrupted before the first iteration finished; nothing to resume", file=sys.stderr)
            return 130
        done = record["history"][-1]["iteration"]
        command = shlex.join(
            [
                "python",
                "-m",
                "sepo_ray.run",
                task.name,
                "--output",
                str(out),
                "--resume",
                "--iterations",
                str(iterations),
            ]
        )
        print(f"\ninterrupted after iteration {done}; continue with: {command}", file=sys.stderr)
        return 130
    final = record["final_checkpoint"]
    print(f"\nresult: {out / 'result.json'}\nfinal checkpoint: {out / final if final else None}", flush=True)
    return 0
