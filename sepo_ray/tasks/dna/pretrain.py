"""Train the DNA task's shipped models: ``python -m sepo_ray.pretrain dna [--only NAME] [--output DIR]``.

Five models, each written as ``NAME.safetensors`` + ``NAME.json`` (a card: data SHA-256, config, training time,
held-out figures) in ``--output`` (default ``pretrained/dna`` under the current directory; the shipped
artifacts in the package are never written over):

- ``generator``: the MDLM denoiser (:class:`~sepo_ray.tasks.dna.models.DNAConvDenoiser`), trained with the continuous-time
  MDLM loss on all 47,872 DHS sequences (as DRAKES pretrains on all of its data), random reverse complements;
- ``ft_oracle``: 4-way cell-type :class:`~sepo_ray.tasks.dna.classifiers.DilatedCNNClassifier` on chromosome half A;
- ``eval_oracle``: 4-way cell-type :class:`~sepo_ray.tasks.dna.classifiers.KmerMLPClassifier` on chromosome half B
  (a different model family, App. E.2 uses two oracles on disjoint chromosome halves);
- ``accessibility``: binary :class:`~sepo_ray.tasks.dna.classifiers.DilatedCNNClassifier`, real DHS vs. dinucleotide-shuffled
  DHS (fresh shuffles each epoch), on all training chromosomes (ATAC-Acc, evaluation only);
- ``ft_accessibility``: the same task for a :class:`~sepo_ray.tasks.dna.classifiers.KmerMLPClassifier` on chromosome
  half A — the accessibility guard that a fine-tuning reward may use (never the evaluation classifier).

Oracles keep the epoch with the best validation (chr2) AUROC and report the test (chr1) figures.
Runs are seeded and deterministic for a given seed and thread count (``--threads``, default 1).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepo_ray.evaluation import auroc  # noqa: F401 - re-exported for the tests
from sepo_ray.models import save_model

from .classifiers import DilatedCNNClassifier, KmerMLPClassifier, strand_averaged_logits
from .data import HEPG2, SEQ_LEN, load_dhs, reverse_complement, split_tensors
from .data.dhs import SPLITS, DHSData, sha256_file
from .data.sequences import dinucleotide_shuffle_batch
from .models import ARTIFACT_DIR, DNAConvDenoiser

MODEL_NAMES = ("generator", "ft_oracle", "eval_oracle", "accessibility", "ft_accessibility")


@dataclass(frozen=True)
class GeneratorConfig:
    """MDLM pretraining of the DNA denoiser."""

    hidden_dim: int = 64  #: channels of the dilated CNN
    num_cnn_stacks: int = 2  #: 5 * stacks residual layers
    batch_size: int = 64  #: sequences per optimiser step
    steps: int = 900  #: optimiser steps (1.2 epochs of the 47,872 sequences)
    lr: float = 2e-3  #: peak AdamW learning rate (linear warm-up, cosine decay to lr / 20)
    warmup_steps: int = 100  #: linear warm-up steps
    weight_decay: float = 0.0  #: AdamW weight decay
    grad_clip: float = 1.0  #: gradient-norm clip
    rc_augment: bool = True  #: replace each sequence by its reverse complement w.p. 1/2
    eval_sequences: int = 1000  #: held-out sequences for the bits/base figure
    eval_draws: int = 8  #: antithetic time draws per held-out sequence
    seed: int = 0


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


CONFIGS: dict[str, GeneratorConfig | ClassifierConfig] = {
    "generator": GeneratorConfig(),
    "ft_oracle": ClassifierConfig(
        model="cnn",
        model_kwargs={"num_classes": 4, "hidden_dim": 64, "dilations": [1, 2, 4, 8], "dropout": 0.1},
        train_split="half_a",
        epochs=5,
        lr=2e-3,
        seed=1,
    ),
    "eval_oracle": ClassifierConfig(
        model="kmer",
        model_kwargs={"num_classes": 4, "ks": [1, 2, 3, 4, 5, 6], "hidden_dim": 256, "dropout": 0.3},
        train_split="half_b",
        epochs=3,
        lr=1e-3,
        seed=2,
    ),
    "accessibility": ClassifierConfig(
        model="cnn",
        model_kwargs={"num_classes": 1, "hidden_dim": 64, "dilations": [1, 2, 4, 8], "dropout": 0.1},
        train_split="train_all",
        epochs=2,
        lr=2e-3,
        task="accessibility",
        seed=3,
    ),
    # the accessibility guard of the fine-tuning reward: another model family, chromosome half A only, so that
    # a policy that fools it does not thereby fool the evaluation classifier above
    "ft_accessibility": ClassifierConfig(
        model="kmer",
        model_kwargs={"num_classes": 1, "ks": [1, 2, 3, 4, 5, 6], "hidden_dim": 256, "dropout": 0.3},
        train_split="half_a",
        epochs=3,
        lr=1e-3,
        task="accessibility",
        seed=4,
    ),
}


# --------------------------------------------------------------------------------------------- utilities


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


def _random_rc(x: Tensor, generator: torch.Generator) -> Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5  # (B,)
    return torch.where(flip[:, None], reverse_complement(x), x)  # (B, L)


class _Clock:
    """Wall and process-CPU seconds since construction."""

    def __init__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    def cpu(self) -> float:
        return time.process_time() - self.cpu0


def _environment(threads: int) -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": threads,
    }


def _write_card(out_dir: Path, name: str, card: dict) -> None:
    card["file_sha256"] = sha256_file(out_dir / f"{name}.safetensors")
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")


# --------------------------------------------------------------------------------------------- generator


def train_generator(
    data: DHSData, cfg: GeneratorConfig, out_dir: Path, threads: int, log=print
) -> tuple[DNAConvDenoiser, dict]:
    """MDLM pretraining (continuous-time NELBO per token, antithetic times) on all sequences."""
    from sepo_ray.diffusion import LogLinearSchedule, MaskingProcess, mdlm_loss

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = DNAConvDenoiser(hidden_dim=cfg.hidden_dim, num_cnn_stacks=cfg.num_cnn_stacks)
    process = MaskingProcess(model.num_tokens, LogLinearSchedule())
    x_all = data.tokens  # (N, L)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    clock = _Clock()
    perm, pos, running = torch.randperm(len(x_all), generator=gen), 0, []
    model.train()
    for step in range(cfg.steps):
        if pos + cfg.batch_size > len(perm):
            perm, pos = torch.randperm(len(x_all), generator=gen), 0
        x0 = x_all[perm[pos : pos + cfg.batch_size]]  # (B, L)
        pos += cfg.batch_size
        if cfg.rc_augment:
            x0 = _random_rc(x0, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = mdlm_loss(model, x0, process, generator=gen, antithetic=True).mean() / SEQ_LEN  # nats / base
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
            bits = np.mean(running[-50:]) / math.log(2)
            log(
                f"[generator] step {step + 1}/{cfg.steps}  train NELBO {bits:.4f} bits/base  "
                f"{clock.wall():.0f}s wall"
            )
    train_wall, train_cpu = clock.wall(), clock.cpu()
    model.eval()
    heldout = {}
    for split in ("validation", "test"):
        x, _ = split_tensors(data, split)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))[: cfg.eval_sequences]
        heldout[split] = continuous_nelbo_bits(model, x[idx], process, cfg.eval_draws, seed=1234)
        log(f"[generator] {split} ({'/'.join(SPLITS[split])}) NELBO {heldout[split]:.4f} bits/base")
    save_model(model, out_dir / "generator.safetensors", {"name": "dna_generator"})
    card = {
        "name": "generator",
        "description": "MDLM denoiser (DRAKES dilated-CNN family), time-unconditioned, pretrained on all DHS rows",
        "class": "DNAConvDenoiser",
        "model_config": model.config,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_config": asdict(cfg),
        "data": {"sha256": data.sha256, "rows": "all", "num_train": len(x_all)},
        "training_time_s": {"wall": round(train_wall, 1), "process_cpu": round(train_cpu, 1)},
        "final_train_nelbo_bits_per_base": float(np.mean(running[-50:]) / math.log(2)),
        "heldout": {
            "note": "the generator is trained on all rows (as DRAKES); these chromosomes are in its training set",
            "nelbo_bits_per_base": heldout,
            "num_sequences": cfg.eval_sequences,
            "draws_per_sequence": cfg.eval_draws,
        },
        "environment": _environment(threads),
    }
    _write_card(out_dir, "generator", card)
    return model, card


@torch.no_grad()
def continuous_nelbo_bits(
    model: nn.Module, x: Tensor, process, draws: int, seed: int, batch: int = 250
) -> float:
    """Mean continuous-time MDLM NELBO in bits per base: ``draws`` antithetic times per sequence. x (N, L)."""
    gen = torch.Generator().manual_seed(seed)
    from sepo_ray.diffusion import mdlm_loss

    total = 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].repeat_interleave(draws, dim=0)  # (b * draws, L)
        total += mdlm_loss(model, xb, process, generator=gen, antithetic=True).sum().item()
    return total / (len(x) * draws * x.shape[1] * math.log(2))


# ----------------------------------------------------------------------------------------------- oracles


def _train_rows(data: DHSData, split: str) -> np.ndarray:
    if split == "train_all":
        return np.concatenate([data.split("half_a"), data.split("half_b")])
    return data.split(split)


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
    rows = _train_rows(data, cfg.train_split)
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
    clock, best, best_state, history = _Clock(), -1.0, None, []
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
                x = _random_rc(x, gen)
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
        "environment": _environment(threads),
    }
    if name == "eval_oracle" and (out_dir / "ft_oracle.safetensors").is_file():
        card["agreement_with_ft_oracle"] = oracle_agreement(data, out_dir)
        log(f"[{name}] agreement with ft_oracle: {card['agreement_with_ft_oracle']}")
    _write_card(out_dir, name, card)
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


# --------------------------------------------------------------------------------------------------- CLI


DEFAULT_OUTPUT = Path("pretrained") / "dna"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sepo_ray.pretrain dna", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--only", choices=MODEL_NAMES, action="append", help="train only this model (repeatable)"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"output directory (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: fastest on a busy machine)"
    )
    parser.add_argument("--seed", type=int, default=None, help="override every model's seed")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    out_dir = args.output
    if out_dir.resolve() == ARTIFACT_DIR.resolve():
        parser.error(f"--output {out_dir} is the shipped artifacts folder; write elsewhere and compare first")
    torch.set_num_threads(args.threads)
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    data = load_dhs()
    log(f"DHS table {data.path} ({len(data)} rows, sha256 {data.sha256[:12]}...) -> {out_dir}")
    for name in args.only or MODEL_NAMES:
        cfg = CONFIGS[name]
        if args.seed is not None:
            cfg = type(cfg)(**{**asdict(cfg), "seed": args.seed})
        if name == "generator":
            train_generator(data, cfg, out_dir, args.threads, log)
        else:
            train_classifier(data, name, cfg, out_dir, args.threads, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
