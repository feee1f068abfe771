"""Evaluate generators on a task's held-out table (paper Table 2 and Fig. 2): metrics over seeds, plot, samples.

    sepo-ray evaluate TASK --model pretrained --num-samples 640 --seeds 0,1,2 --output DIR [--steps T]

Rows: each ``--model`` (``pretrained``, a generator ``.safetensors`` file, or a directory holding one; repeat the
flag or separate with commas) sampled with the T-step sampler once per seed, plus the task's reference rows of
real data, drawn once per seed. A task with prompts completes, at each seed, the same held-out prompts in every
row; ``--prompts FILE`` (one prompt per line) draws them from the user's prompts instead (then without the
reference rows, which continue held-out prompts). Refused before any sampling, with one line: a ``--model`` whose
weights are not all finite, a ``--num-samples`` above a reference set's size, an ``--output`` that is a file, a
``--prompts`` file that is missing, empty, or holds an empty prompt or one longer than the task's prompt context.

Writes to DIR:

- ``metrics.json``: {row: {metric: {"mean": float, "std": float}}}, mean and sample standard deviation (ddof=1;
  0 for one seed) over seeds of the task's metrics;
- ``table.md``: the same as a Markdown table, "mean (std)";
- ``<score>.png``: violin plot of the task's plotted per-sequence score for every row, all seeds pooled;
- ``samples.parquet``: one line per sequence: row, seed, (a task with prompts) prompt and completion, sequence
  (the whole text) and the per-sequence scores;
- ``run.json``: arguments, wall and CPU time.

The library functions are in :mod:`sepo_ray.evaluation`; ``python -m sepo_ray.evaluate`` runs the same command.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sepo_ray.evaluation import (
    DEFAULT_STEPS,
    RowSpec,
    evaluate_rows,
    format_table,
    load_generator,
    probe_references,
    reference_row,
    write_outputs,
)


def split_list(values: list[str] | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (repeatable, comma-separated flags)."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def parse_seeds(text: str, parser: argparse.ArgumentParser, flag: str = "--seeds") -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; a parser error names the flag otherwise."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        parser.error(f"{flag} must be comma-separated integers, got {text!r}")
    if not seeds:
        parser.error(f"{flag} must name at least one seed")
    return seeds


def main(argv: list[str] | None = None) -> int:
    from sepo_ray.tasks import available_tasks, get_task

    parser = argparse.ArgumentParser(prog="sepo-ray evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", help=f"task name ({', '.join(available_tasks())}) or module:TaskClass")
    parser.add_argument(
        "--model",
        action="append",
        help="'pretrained' or a generator .safetensors path (repeatable, or comma-separated); default pretrained",
    )
    parser.add_argument("--num-samples", type=int, default=640, help="sequences per row and seed (640)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (0,1,2)")
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps T ({DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--elbo-steps", type=int, default=None, help="ELBO steps of the likelihood (default: the task's)"
    )
    parser.add_argument("--no-references", action="store_true", help="skip the task's rows of real data")
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help="prompts to complete, one per line (a task with prompts; default: its held-out prompts)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (1 is faster on a busy machine)"
    )
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds, parser)
    for flag, value in (
        ("--num-samples", args.num_samples),
        ("--steps", args.steps),
        ("--elbo-steps", args.elbo_steps or 1),
    ):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"--output {args.output} is a file, not a directory")
    try:
        task = get_task(args.task)
    except ValueError as e:
        parser.error(str(e))
    prompts = None
    if args.prompts is not None:
        try:
            from sepo_ray.tasks import read_prompt_file

            prompts = task.encode_prompts(read_prompt_file(args.prompts))  # (K, P)
        except ValueError as e:
            print(f"error: --prompts {args.prompts}: {e}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    models = split_list(args.model) or ["pretrained"]
    references = {} if args.no_references or prompts is not None else task.reference_rows()
    rows: dict[str, RowSpec] = {}
    for m in models:
        name = "pretrained" if m == "pretrained" else Path(m).stem if Path(m).is_file() else Path(m).name
        while name in rows or name in references:
            name += "_"
        try:
            rows[name] = load_generator(task, m, device=args.device)
        except (ValueError, FileNotFoundError) as e:
            parser.error(f"--model {m}: {e}")
    try:  # a reference set smaller than --num-samples fails now, not after the models' rows
        probed = probe_references(references, seeds[0], args.num_samples)
    except ValueError as e:
        parser.error(f"--num-samples {args.num_samples}: {e}; use --no-references or fewer samples")
    for ref, draw in references.items():
        rows[ref] = reference_row(draw, args.num_samples, (seeds[0], probed[ref]))
    scorer = task.scorer(device=args.device, elbo_steps=args.elbo_steps)
    metrics, samples = evaluate_rows(task, rows, seeds, args.num_samples, args.steps, scorer, prompts=prompts)
    wall = time.perf_counter() - t0
    info = {
        "task": args.task,
        "models": models,
        "num_samples": args.num_samples,
        "seeds": seeds,
        "steps": args.steps,
        "elbo_steps": args.elbo_steps,
        "prompts": str(args.prompts) if args.prompts is not None else None,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "wall_s": round(wall, 1),
        "process_cpu_s": round(time.process_time() - c0, 1),
    }
    out = write_outputs(args.output, metrics, samples, scorer, info)
    print(format_table(metrics, scorer.metric_labels, scorer.metric_digits), end="")
    print(f"wrote {out}/metrics.json, table.md, samples.parquet in {wall:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
