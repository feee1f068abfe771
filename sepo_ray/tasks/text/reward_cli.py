"""``reward`` part of ``python -m sepo_ray.pretrain text``: train the GPT-2 sentiment reward model into
``--output/reward/``, never into the shipped folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .reward_training import ARTIFACTS_DIR, DEFAULT_OUTPUT, RewardModelConfig, train_reward_model


def main(argv: Sequence[str] | None = None) -> int:
    """``reward`` part of ``python -m sepo_ray.pretrain text``: trains and writes ``--output/reward/``."""
    parser = argparse.ArgumentParser(
        prog="python -m sepo_ray.pretrain text --only reward",
        description="Train the text task's GPT-2 sentiment reward model on IMDB.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"writes OUTPUT/reward/ (default {DEFAULT_OUTPUT})",
    )
    parser.add_argument("--seed", type=int, default=RewardModelConfig.seed, help="seed (default %(default)s)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: fastest on a busy machine)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT/reward/")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    out_dir = args.output / "reward"
    shipped = ARTIFACTS_DIR.resolve()
    if shipped == out_dir.resolve() or shipped in out_dir.resolve().parents:
        parser.error(
            f"--output {args.output} is the shipped artifacts folder; write elsewhere and compare first"
        )
    if out_dir.exists() and not args.overwrite:
        parser.error(f"{out_dir} exists: pass --overwrite or choose another --output")

    def log(msg: str) -> None:
        print(msg, flush=True)

    cfg = RewardModelConfig(seed=args.seed, threads=args.threads)
    train_reward_model(cfg, out_dir, log=log, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
