"""Designs to order: sequences generated, constrained, de-duplicated, selected, scored and ranked, with evidence.

    sepo-ray design TASK --output DIR [--model pretrained|RUN_DIR|MODEL_DIR|FILE] [--n 100] [--seed 0]
                         [--select best-of-N] [--rank-by COLUMN[:asc]] [--reward SPEC] [task options]

TASK comes first; ``sepo-ray design TASK --help`` lists the task's own options (its constraints). The model is
sampled in batches until ``--n`` distinct designs meet every constraint (a task with prompts: ``--n`` per
prompt), each the best of N candidates under the training reward with ``--select best-of-N``; the order stops
with one line (exit 2) when its bounds (``--max-draws-per-candidate``, ``--time-limit``) cannot deliver it.
``--output`` must be a new folder: it receives ``designs.parquet`` (one row a design, best first, with every
score), the task's own files, ``summary.json``, ``summary.md`` and its plots, all at once at the end.

Exit status: 0 delivered; 2 refused input or an order its bounds cannot meet (nothing written); 3 a reward that
failed; 130 interrupted. The library is :mod:`sepo_ray.designs`; ``python -m sepo_ray.design`` runs the same.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_PROMPTS = 8  # held-out prompts a task with prompts completes without --prompts


def build_parser(task=None) -> argparse.ArgumentParser:
    """The options of ``sepo-ray design``; with ``task``, its own options too."""
    from sepo_ray.designs import DesignOptions
    from sepo_ray.tasks import available_tasks

    d = DesignOptions()
    parser = argparse.ArgumentParser(
        prog="sepo-ray design",
        description=__doc__.split("\n\n")[0],
        epilog="sepo-ray design TASK --help adds TASK's own options (its constraints); docs/designs.md has them all",
    )
    parser.add_argument("task", help=f"task name ({', '.join(available_tasks())}) or module:TaskClass")
    parser.add_argument(
        "--output", type=Path, required=True, help="a new folder for the designs (never overwritten)"
    )
    parser.add_argument(
        "--model",
        default="pretrained",
        help="'pretrained' (default), a run folder (its final checkpoint), an exported model folder or a generator file",
    )
    parser.add_argument(
        "--n", type=int, default=d.n, help=f"designs to deliver; per prompt for a task with prompts ({d.n})"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"sampler seed: the same order gives the same designs ({d.seed})",
    )
    parser.add_argument(
        "--select",
        default=None,
        metavar="best-of-N",
        help="N candidates per design, the reward keeps the best",
    )
    parser.add_argument(
        "--rank-by",
        default="reward",
        metavar="COLUMN[:asc]",
        help="the column the designs are sorted by, largest first (':asc' for smallest first); default reward",
    )
    parser.add_argument(
        "--reward",
        default=None,
        metavar="SPEC",
        help="the training reward (default: a run folder's, else the task's run default)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="sampler steps T (default: the run's, else the task's)"
    )
    parser.add_argument(
        "--prompts", type=Path, default=None, metavar="FILE", help="a task with prompts: one prompt a line"
    )
    parser.add_argument(
        "--num-prompts",
        type=int,
        default=DEFAULT_PROMPTS,
        help=f"a task with prompts, without --prompts: held-out prompts drawn with the seed ({DEFAULT_PROMPTS})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"most sequences per sampler batch ({d.batch_size})",
    )
    parser.add_argument(
        "--max-draws-per-candidate",
        type=int,
        default=d.max_draws_per_candidate,
        help=f"the draw bound: this many draws per candidate needed, n x N per prompt ({d.max_draws_per_candidate})",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=d.time_limit_s,
        metavar="S",
        help=f"wall-clock bound of the sampling, seconds ({d.time_limit_s:g})",
    )
    parser.add_argument(
        "--compare-samples",
        type=int,
        default=d.compare_samples,
        help=f"sequences of each comparison row in summary.md (pretrained generator, real data); 0: none ({d.compare_samples})",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    if task is not None:
        group = parser.add_argument_group(f"options of the {task.name} task")
        task.add_design_arguments(group)
    return parser


def _prompts(task, args):
    """The prompt rows (K, P) of a task with prompts: --prompts FILE, else --num-prompts held-out ones drawn with
    the seed; None for a task without prompts. ValueError, one line."""
    import torch

    from sepo_ray.tasks import read_prompt_file

    if not task.prompt_length:
        if args.prompts is not None:
            raise ValueError(f"--prompts: the {task.name} task takes no prompts")
        return None
    if args.prompts is not None:
        try:
            return task.encode_prompts(read_prompt_file(args.prompts))
        except ValueError as e:
            raise ValueError(f"--prompts {args.prompts}: {e}") from None
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    held = task.prompts("test")  # (K, P)
    pick = torch.randperm(len(held), generator=torch.Generator().manual_seed(args.seed))[: args.num_prompts]
    return held[pick]


def _fail(message: str, code: int = 2) -> int:
    print(
        f"error: {str(message).strip().splitlines()[0] if str(message).strip() else message}", file=sys.stderr
    )
    return code


def main(argv: list[str] | None = None) -> int:
    from sepo_ray.tasks import get_task

    argv = list(sys.argv[1:] if argv is None else argv)
    task = None
    if argv and not argv[0].startswith("-"):
        try:
            task = get_task(argv[0])
        except ValueError as e:
            build_parser().error(str(e))
    parser = build_parser(task)
    args = parser.parse_args(argv)
    return run(task, args, parser, shlex.join(["sepo-ray", "design", *argv]))


def run(task, args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    """Checks everything a user gave before any work (exit 2, one line), then makes and writes the designs."""
    import dataclasses

    import torch

    from sepo_ray.designs import (
        DesignError,
        DesignOptions,
        check_new_output,
        make_designs,
        order_defaults,
        parse_rank_by,
        parse_select,
        write_designs,
    )
    from sepo_ray.designs.options import ENGINE_COLUMNS, PROMPT_COLUMNS
    from sepo_ray.oracles.pool import RewardError, check_reward_spec

    try:
        check_new_output(args.output)
        columns = {
            **ENGINE_COLUMNS,
            **(PROMPT_COLUMNS if task.prompt_length else {}),
            **task.design_column_help(),
        }
        rank_by, descending = parse_rank_by(args.rank_by, columns)
        options = DesignOptions(
            n=args.n,
            seed=args.seed,
            select=parse_select(args.select),
            rank_by=rank_by,
            descending=descending,
            batch_size=args.batch_size,
            max_draws_per_candidate=args.max_draws_per_candidate,
            time_limit_s=args.time_limit,
            compare_samples=args.compare_samples,
        ).validate()
        constraints = task.design_constraints(args)
        defaults = order_defaults(task, args.model)
        reward = args.reward or defaults["reward"]
        check_reward_spec(reward)
        options = dataclasses.replace(options, steps=args.steps or defaults["steps"]).validate()
        prompts = _prompts(task, args)
        if args.threads:
            torch.set_num_threads(args.threads)
        designs = make_designs(
            task,
            str(args.model),
            options,
            reward,
            constraints,
            prompts=prompts,
            reward_timeout_s=defaults["reward_timeout_s"],
            device=args.device,
        )
        designs.summary["command"] = command
        designs.summary["reward_source"] = "--reward" if args.reward else defaults["reward_source"]
        write_designs(task, designs, args.output)
    except (DesignError, ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    except RewardError as e:
        return _fail(str(e), 3)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
