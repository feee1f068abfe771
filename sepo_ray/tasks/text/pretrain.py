"""Train the text task's shipped models: ``python -m sepo_ray.pretrain text [--only NAME] [--output DIR]``.

- ``generator``: a small SEDD-layout transformer (:class:`~sepo_ray.models.SEDDTransformer`, absorbing graph,
  log-linear noise) trained with the score-entropy (DWDSE) loss on 64-token chunks of the IMDB train split in
  the compact vocabulary (each chunk starts at a review's first token, so review openings — where prompts come
  from — are in the data); held-out figure: the score-entropy bound on the held-out split, nats per token;
- ``reward``: the GPT-2 sentiment classifier (:mod:`.reward_model`, trained by :mod:`.reward_cli`).

Outputs go to ``--output`` (default ``pretrained/text``), never over the shipped artifacts; runs are seeded.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sepo_ray.tasks.pretrain import check_output_folder

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
DEFAULT_OUTPUT = Path("pretrained") / "text"
MODEL_NAMES = ("generator", "reward")


@dataclass(frozen=True)
class GeneratorConfig:
    """The CPU-sized generator and its training (the shipped one: these defaults, 29 minutes on one CPU thread)."""

    seed: int = 0
    length: int = 64  # tokens per sequence: prompt (<= 16) + completion
    vocab_size: int = 4096  # most frequent GPT-2 tokens kept (+ UNK + MASK)
    hidden_size: int = 128
    n_heads: int = 4
    n_blocks: int = 4
    cond_dim: int = 64
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    max_steps: int = 1500
    max_minutes: float | None = None  # optional wall-clock budget; training stops at whichever comes first
    eval_sequences: int = 1024  # held-out chunks for the bound
    threads: int = 1


def _lr(cfg: GeneratorConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10 % over max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


@torch.no_grad()
def heldout_bound(net, data: torch.Tensor, seed: int = 0, batch_size: int = 128) -> float:
    """Score-entropy bound on -log p per token (nats), antithetic times, seeded: mean over ``data`` (N, L)."""
    from sepo_ray.diffusion.score_entropy import score_entropy_loss

    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, len(data), batch_size):
        loss, _ = score_entropy_loss(net, data[i : i + batch_size], generator=g, antithetic=True)
        total += float(loss.sum())
    return total / (len(data) * data.shape[1])


def train_generator(cfg: GeneratorConfig, out_dir: Path, log=print) -> dict:
    """Train the generator with the DWDSE loss, write ``out_dir/generator.safetensors`` and its card."""
    from sepo_ray.diffusion.score_entropy import score_entropy_loss
    from sepo_ray.models import SEDDTransformer, save_model
    from sepo_ray.runtime import write_json

    from .data import REVIEWS_SHA256, compact_vocab, training_sequences

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    vocab = compact_vocab(cfg.vocab_size)
    train = training_sequences(cfg.length, "train", vocab)  # (M, L)
    heldout = training_sequences(cfg.length, "heldout", vocab)[: cfg.eval_sequences]
    net = SEDDTransformer(
        hidden_size=cfg.hidden_size,
        n_heads=cfg.n_heads,
        n_blocks=cfg.n_blocks,
        cond_dim=cfg.cond_dim,
        vocab_size=vocab.vocab_size,
        max_length=cfg.length,
        dropout=0.0,
    )
    log(
        f"generator: {sum(p.numel() for p in net.parameters()):,} parameters, {len(train):,} train chunks of "
        f"{cfg.length} tokens, vocabulary {vocab.vocab_size} (incl. UNK, MASK)"
    )
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    t0, step, running = time.time(), 0, None
    initial = heldout_bound(net.eval(), heldout, cfg.seed)
    net.train()
    while step < cfg.max_steps and (cfg.max_minutes is None or time.time() - t0 < 60 * cfg.max_minutes):
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        idx = torch.randint(0, len(train), (cfg.batch_size,), generator=g)
        loss, _ = score_entropy_loss(net, train[idx], generator=g)
        per_token = loss.mean() / cfg.length
        opt.zero_grad(set_to_none=True)
        per_token.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        value = float(per_token.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        step += 1
        if step % 200 == 0:
            log(f"  step {step:>5} | loss {running:.3f} nats/token | {time.time() - t0:.0f} s")
    net.eval()
    final = heldout_bound(net, heldout, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(net, out_dir / "generator.safetensors", {"vocab_size": str(cfg.vocab_size)})
    card = {
        "model": "generator",
        "config": asdict(cfg),
        "steps": step,
        "wall_s": round(time.time() - t0, 1),
        "data_sha256": REVIEWS_SHA256,
        "heldout_nats_per_token": {"untrained": initial, "trained": final},
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": cfg.threads,
        },
    }
    write_json(out_dir / "generator.json", card)
    log(f"generator: held-out bound {initial:.3f} -> {final:.3f} nats/token after {step} steps -> {out_dir}")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sepo-ray pretrain text", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", choices=MODEL_NAMES, action="append", help="train only this model (repeatable)"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"output directory ({DEFAULT_OUTPUT})"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--max-minutes", type=float, default=None, help="generator training budget (minutes)")
    parser.add_argument("--max-steps", type=int, default=None, help="generator optimiser steps")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that holds model files")
    args = parser.parse_args(argv)
    check_output_folder(args.output, args.overwrite)  # never the shipped artifacts, nor other models unasked
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    names = args.only or list(MODEL_NAMES)
    if "generator" in names:
        overrides = {"seed": args.seed, "threads": args.threads}
        if args.max_minutes is not None:
            overrides["max_minutes"] = args.max_minutes
        if args.max_steps is not None:
            overrides["max_steps"] = args.max_steps
        train_generator(GeneratorConfig(**overrides), args.output)
    if "reward" in names:
        from .reward_cli import main as reward_main

        rc = reward_main(
            ["--output", str(args.output), "--seed", str(args.seed), "--threads", str(args.threads)]
            + (["--overwrite"] if args.overwrite else [])
        )
        if rc:
            return rc
    return 0
