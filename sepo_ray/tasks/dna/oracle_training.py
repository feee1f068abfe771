"""Supervised training of the DNA task's oracle classifiers (``ft_oracle``, ``eval_oracle``, ``accessibility``,
``ft_accessibility`` in ``python -m sepo_ray.pretrain dna``) and their held-out figures.

Cell-type oracles are 4-way classifiers (cross-entropy) scored by their HepG2 log-odds; accessibility classifiers
tell real DHS from dinucleotide-shuffled DHS (logistic loss, fresh shuffles each epoch). Each keeps the epoch with
the best validation (chr2) AUROC and reports the test (chr1) figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepo_ray.models import save_model
from sepo_ray.stats import auroc

from .cards import Clock, environment, write_card
from .classifiers import DilatedCNNClassifier, KmerMLPClassifier, strand_averaged_logits
from .data import HEPG2, random_reverse_complement, split_tensors
from .data.dhs import SPLITS, DHSData
from .data.sequences import dinucleotide_shuffle_batch


@dataclass(frozen=True)
class ClassifierConfig:
    """Supervised training of an oracle classifier (cross-entropy, or logistic loss if one output)."""

    model: str = "cnn"  #: "cnn" (DilatedCNNClassifier) or "kmer" (KmerMLPClassifier)
    model_kwargs: dict = field(default_factory=dict)  #: passed to the model class
    train_split: str = "half_a"  #: rows the model sees (``sepo_ray.data.dhs.SPLITS`` or "train_all")
    epochs: int = 5  #: passes over the training rows; the best validation epoch is kept
    batch_size: int = 128
    lr: float = 2e-3  #: peak learning rate of a one-cycle schedule
    weight_decay: float = 1e-2
    rc_augment: bool = True  #: reverse-complement each sequence w.p. 1/2
    task: str = "celltype"  #: "celltype" (4-way TAG) or "accessibility" (real vs dinucleotide-shuffled)
    max_train_rows: int | None = None  #: use only this many (seeded random) training rows; None = all
    max_eval_rows: int | None = None  #: use only this many validation / test rows (smoke runs); None = all
    seed: int = 0


def hepg2_log_odds(logits: Tensor) -> Tensor:
    """log p(HepG2) - log(1 - p(HepG2)) of a 4-way softmax = logit_H - logsumexp(other logits). (B, 4) -> (B,)"""
    others = torch.cat([logits[:, :HEPG2], logits[:, HEPG2 + 1 :]], dim=1)  # (B, 3)
    return logits[:, HEPG2] - torch.logsumexp(others, dim=1)  # (B,)


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """Strand-averaged logits of a classifier in eval mode, batched. x (N, L) -> (N, C)."""
    was_training = model.training
    model.eval()
    out = [strand_averaged_logits(model, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def _build_classifier(cfg: ClassifierConfig) -> nn.Module:
    if cfg.model == "cnn":
        return DilatedCNNClassifier(**cfg.model_kwargs)
    if cfg.model == "kmer":
        return KmerMLPClassifier(**cfg.model_kwargs)
    raise ValueError(f"model must be 'cnn' or 'kmer', got {cfg.model!r}")


def _accessibility_set(x: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Real rows (label 1) + one dinucleotide shuffle of each (label 0). x (N, L) -> (2N, L), (2N,)."""
    shuffled = dinucleotide_shuffle_batch(x, np.random.default_rng(seed))  # (N, L)
    return torch.cat([x, shuffled]), torch.cat([torch.ones(len(x)), torch.zeros(len(x))]).long()


def evaluate_classifier(model: nn.Module, x: Tensor, y: Tensor, task: str) -> dict:
    """Held-out figures: AUROC of the score (HepG2 log-odds or real-vs-shuffled logit), accuracy."""
    logits = predict_logits(model, x)  # (N, C)
    if task == "celltype":
        score = hepg2_log_odds(logits).numpy()
        return {
            "auroc_hepg2_vs_rest": auroc(score, (y == HEPG2).numpy()),
            "accuracy_4way": float((logits.argmax(1) == y).float().mean()),
            "num_sequences": len(x),
        }
    score = logits[:, 0].numpy()
    return {
        "auroc_real_vs_shuffled": auroc(score, y.numpy().astype(bool)),
        "accuracy": float(((score > 0) == y.numpy().astype(bool)).mean()),
        "num_sequences": len(x),
    }


def train_classifier(
    data: DHSData, name: str, cfg: ClassifierConfig, out_dir: Path, threads: int, log=print
) -> tuple[nn.Module, dict]:
    """Train one oracle classifier; keep the best validation epoch; write safetensors + card."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = _build_classifier(cfg)
    rows = data.split(cfg.train_split)
    if cfg.max_train_rows is not None:
        rows = np.sort(
            np.random.default_rng(cfg.seed).choice(rows, min(cfg.max_train_rows, len(rows)), replace=False)
        )
    x_train, y_train = data.tokens[rows], torch.from_numpy(data.cell_type[rows])
    x_val, y_val = split_tensors(data, "validation")
    x_test, y_test = split_tensors(data, "test")
    if cfg.max_eval_rows is not None:
        pick = np.random.default_rng(cfg.seed + 1)
        keep_val = torch.from_numpy(np.sort(pick.permutation(len(x_val))[: cfg.max_eval_rows]))
        keep_test = torch.from_numpy(np.sort(pick.permutation(len(x_test))[: cfg.max_eval_rows]))
        x_val, y_val, x_test, y_test = x_val[keep_val], y_val[keep_val], x_test[keep_test], y_test[keep_test]
    if cfg.task == "accessibility":
        x_val, y_val = _accessibility_set(x_val, seed=10_000 + cfg.seed)
        x_test, y_test = _accessibility_set(x_test, seed=20_000 + cfg.seed)
    elif cfg.task != "celltype":
        raise ValueError(f"task must be 'celltype' or 'accessibility', got {cfg.task!r}")
    n_per_epoch = len(x_train) * (2 if cfg.task == "accessibility" else 1)
    steps_per_epoch = n_per_epoch // cfg.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1
    )
    metric = "auroc_hepg2_vs_rest" if cfg.task == "celltype" else "auroc_real_vs_shuffled"
    clock, best, best_state, history = Clock(), -1.0, None, []
    for epoch in range(cfg.epochs):
        model.train()
        if cfg.task == "accessibility":
            xe, ye = _accessibility_set(x_train, seed=cfg.seed * 1000 + epoch)
        else:
            xe, ye = x_train, y_train
        perm = torch.randperm(len(xe), generator=gen)
        losses = []
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x, y = xe[idx], ye[idx]
            if cfg.rc_augment:
                x = random_reverse_complement(x, gen)
            logits = model(x)  # (B, C)
            if cfg.task == "accessibility":
                loss = F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
            else:
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val = evaluate_classifier(model, x_val, y_val, cfg.task)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "validation": val[metric]})
        log(
            f"[{name}] epoch {epoch + 1}/{cfg.epochs}  loss {np.mean(losses):.4f}  "
            f"validation {metric} {val[metric]:.4f}  {clock.wall():.0f}s wall"
        )
        if val[metric] > best:
            best, best_state = val[metric], {k: v.clone() for k, v in model.state_dict().items()}
    train_wall, train_cpu = clock.wall(), clock.cpu()
    model.load_state_dict(best_state)
    model.eval()
    figures = {
        "validation": evaluate_classifier(model, x_val, y_val, cfg.task),
        "test": evaluate_classifier(model, x_test, y_test, cfg.task),
    }
    log(f"[{name}] test ({'/'.join(SPLITS['test'])}) {metric} {figures['test'][metric]:.4f}")
    save_model(model, out_dir / f"{name}.safetensors", {"name": f"dna_{name}"})
    card = {
        "name": name,
        "class": type(model).__name__,
        "model_config": model.config,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_config": asdict(cfg),
        "data": {
            "sha256": data.sha256,
            "train_split": cfg.train_split,
            "train_chromosomes": sorted(set(data.chrom[rows].tolist())),
            "num_train": len(rows),
            "validation_chromosomes": list(SPLITS["validation"]),
            "test_chromosomes": list(SPLITS["test"]),
        },
        "score": (
            "HepG2 log-odds log p(HepG2|x) - log(1 - p(HepG2|x)), 4-way softmax, strand-averaged logits"
            if cfg.task == "celltype"
            else "P(real DHS | x) = sigmoid(logit), strand-averaged logit; negatives are dinucleotide shuffles"
        ),
        "training_time_s": {"wall": round(train_wall, 1), "process_cpu": round(train_cpu, 1)},
        "history": history,
        "best_epoch": int(np.argmax([h["validation"] for h in history]) + 1),
        "heldout": figures,
        "environment": environment(threads),
    }
    if name == "eval_oracle" and (out_dir / "ft_oracle.safetensors").is_file():
        card["agreement_with_ft_oracle"] = oracle_agreement(data, out_dir)
        log(f"[{name}] agreement with ft_oracle: {card['agreement_with_ft_oracle']}")
    write_card(out_dir, name, card)
    return model, card


def oracle_agreement(data: DHSData, directory: Path) -> dict:
    """Pearson / Spearman of the two oracles' HepG2 log-odds on the real validation and test sequences."""
    from scipy.stats import pearsonr, spearmanr

    from .models import load_model

    ft, ev = (
        load_model(directory / "ft_oracle.safetensors"),
        load_model(directory / "eval_oracle.safetensors"),
    )
    out = {}
    for split in ("validation", "test"):
        x, _ = split_tensors(data, split)
        a, b = hepg2_log_odds(predict_logits(ft, x)).numpy(), hepg2_log_odds(predict_logits(ev, x)).numpy()
        out[split] = {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0])}
    return out
