"""``sepo-ray compare TASK --output DIR`` (the paper's Table 2 / Fig. 2: every method at one oracle budget, with
the task's rows of real data) and ``sepo-ray frontier TASK --output DIR`` (the same at several budgets, after equal
tuning): one experiment (:mod:`sepo_ray.experiment`) with two sets of defaults."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from sepo_ray.methods import COMPARE_METHODS, FRONTIER_METHODS, METHODS
from sepo_ray.protocol import DESIGNS, TUNING_SEED

DEFAULTS = {
    "compare": {"methods": COMPARE_METHODS, "budgets": None, "tune_trials": 0, "references": True},
    "frontier": {
        "methods": FRONTIER_METHODS,
        "budgets": "512,1024,2048",
        "tune_trials": 4,
        "references": False,
    },
}


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise ValueError(f"{flag}: expected non-negative KL weights, got {text!r}")
    return values


def runnable(task, methods) -> list[str]:
    """The default methods a task can run: SVDD does not condition on prompts, and a fine-tuning method whose
    settings the task refuses (gradient flow re-masks a prompt) is left out, with a line saying so."""
    from sepo_ray.methods import get_method
    from sepo_ray.resolve import resolve_settings

    kept = []
    for name in methods:
        method = get_method(name)
        try:
            if name == "svdd" and task.prompt_length:
                raise ValueError("SVDD does not condition on prompts")
            if method.trains:
                resolve_settings(task, benchmark=True, method=method.settings)
        except ValueError as e:
            print(f"== leaving out {name} for task {task.name}: {e}", flush=True)
            continue
        kept.append(name)
    return kept


def parser(command: str) -> argparse.ArgumentParser:
    d = DEFAULTS[command]
    p = argparse.ArgumentParser(
        prog=f"sepo-ray {command}", description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    p.add_argument("task", nargs="?", default="dna", help="task name or module:TaskClass (default dna)")
    p.add_argument("--output", type=Path, required=True, help="experiment folder (runs, rows, report)")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {list(METHODS)} (default: "
                   f"{','.join(d['methods'])}, less those the task cannot run)")  # fmt: skip
    p.add_argument("--budgets", default=d["budgets"],
                   help="oracle calls per design batch (default: " + (d["budgets"] or "the task's `run` budget") + ")")  # fmt: skip
    p.add_argument(
        "--alphas", default=None, help="comma-separated KL weights: every fine-tuning method at each"
    )
    p.add_argument("--seeds", default=None, help="training seeds of fine-tuned rows, sampling seeds of others "
                   "(default 0..n-1 with n the task's min_report_seeds: 5 for DNA, 3 for text; fewer is marked "
                   "exploratory)")  # fmt: skip
    p.add_argument("--designs", default=",".join(map(str, DESIGNS)),
                   help="numbers of designs K the report prices: total calls = tuning + training + K x calls per "
                   "design, and the winner at each K")  # fmt: skip
    p.add_argument("--design-size", type=int, default=64, help="sequences per design batch (D)")
    p.add_argument("--design-batches", type=int, default=10, help="design batches per seed and row")
    p.add_argument(
        "--steps", type=int, default=None, help="sampling steps T (default: the runs' denoise_steps)"
    )
    p.add_argument("--elbo-steps", type=int, default=None, help="ELBO time draws (default: the task's)")
    p.add_argument("--set", action="append", default=[], metavar="[ENTRY.]KEY=VALUE",
                   help="setting for every fine-tuning run, or for one entry's (fixed: not tuned)")  # fmt: skip
    p.add_argument("--configs", type=Path, default=None, help="JSON {entry: {key: value}} of chosen settings")
    p.add_argument(
        "--tune-trials", type=int, default=d["tune_trials"], help="Tune trials per entry (0: no tuning)"
    )
    p.add_argument("--tune-seed", type=int, default=0, help="search seed (the same for every entry)")
    p.add_argument("--tune-calls", type=int, default=None,
                   help="fine-tuning oracle calls per tuning trial: the horizon tuned for (default: the largest "
                   "budget)")  # fmt: skip
    p.add_argument("--tuning-seed", type=int, default=TUNING_SEED,
                   help=f"training seed of every tuning trial, never a reported seed (default {TUNING_SEED})")  # fmt: skip
    p.add_argument(
        "--tune-only", action="store_true", help="stop after tuning (DIR/tuning.json has the choices)"
    )
    p.add_argument("--tune-realism", type=float, default=None,
                   help="validation realism guard of tuning (default: the task's; 0: none)")  # fmt: skip
    p.add_argument("--tune-samples", type=int, default=128, help="validation samples per trial evaluation")
    p.add_argument("--references", action=argparse.BooleanOptionalAction, default=d["references"],
                   help="the task's rows of real data")  # fmt: skip
    p.add_argument("--svdd-candidates", type=int, default=4, help="most SVDD candidates M per scored step")
    p.add_argument(
        "--svdd-temperature", type=float, default=0.0, help="SVDD selection temperature (0: argmax)"
    )
    p.add_argument("--score-metric", default=None, help="metric rows are ranked by (default: the task's)")
    p.add_argument("--realism-metric", default=None, help="metric of the realism guard (default: the task's)")
    p.add_argument(
        "--realism-min", type=float, default=None, help="realism guard of the best row (default: task's)"
    )
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray (default: all)")
    p.add_argument("--merge", default=None, metavar="DIR,DIR",
                   help="merge these finished experiments (parts: other methods or other seeds, the same protocol) "
                        "into one report in --output; runs nothing and takes no other option")  # fmt: skip
    return p


def merge(p: argparse.ArgumentParser, args) -> None:
    """``--merge``: one report from finished parts (:mod:`sepo_ray.experiment.merge`)."""
    from sepo_ray.experiment.merge import merge_experiments
    from sepo_ray.tasks import get_task

    skip = {"task", "output", "merge"}
    given = [a.option_strings[0] for a in p._actions if a.dest not in skip and a.option_strings
             and a.dest != "help" and getattr(args, a.dest) != a.default]  # fmt: skip
    if given:
        raise ValueError(
            f"--merge takes only TASK and --output (the parts fix the rest), not {', '.join(given)}"
        )
    folders = [Path(f) for f in args.merge.split(",") if f.strip()]
    merge_experiments(get_task(args.task), folders, args.output)
    print(f"== merged {len(folders)} parts into {args.output}", flush=True)


def main(argv=None, command: str = "compare") -> int:
    from sepo_ray.experiment import Tuning, prepare, run_experiment
    from sepo_ray.tasks import get_task

    p = parser(command)
    args = p.parse_args(argv)
    try:
        if args.merge is not None:
            merge(p, args)
            return 0
        task = get_task(args.task)
        if args.budgets is None:  # the budget of the task's default run
            from sepo_ray.resolve import resolve_settings

            s = resolve_settings(task)
            budgets = [int(task.default_iterations) * int(s["prompts_per_batch"]) * int(s["group_size"])]
        else:
            budgets = _ints(args.budgets, "--budgets")
        if args.tune_only and not args.tune_trials:
            raise ValueError("--tune-only needs --tune-trials >= 1")
        realism_min = args.tune_realism if args.tune_realism is not None else task.validation_realism_min
        tuning = Tuning(
            args.tune_trials,
            args.tune_seed,
            args.tune_calls,
            realism_min,
            args.tune_samples,
            args.num_cpus,
            args.tuning_seed,
        )
        seeds = _ints(args.seeds, "--seeds") if args.seeds else list(range(task.min_report_seeds))
        if args.methods is None:
            methods = runnable(task, DEFAULTS[command]["methods"])
        else:
            methods = [m for m in args.methods.split(",") if m]
        exp = prepare(
            args.task, args.output, methods, budgets, seeds,
            args.design_size, args.design_batches, args.steps, args.elbo_steps, args.set, args.configs,
            _floats(args.alphas, "--alphas"), tuning, args.references, args.score_metric, args.realism_metric,
            args.realism_min, args.svdd_candidates, args.svdd_temperature, args.num_cpus,
            _ints(args.designs, "--designs"),
        )  # fmt: skip
        run_experiment(exp, tune_only=args.tune_only)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # finished runs, rows and tuning stay; the same command resumes the rest
        again = shlex.join(["sepo-ray", command, *(sys.argv[1:] if argv is None else argv)])
        print(
            f"\ninterrupted; the finished work in {args.output} is kept. Resume with: {again}",
            file=sys.stderr,
        )
        return 130
    return 0


def compare_main(argv=None) -> int:
    return main(argv, "compare")


def frontier_main(argv=None) -> int:
    return main(argv, "frontier")
