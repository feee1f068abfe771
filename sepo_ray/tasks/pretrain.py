"""Pretrain a masked-diffusion denoiser on a task's own sequences: the MDLM loop, for any task author.

    import torch
    from sepo_ray.models import ConvDenoiser
    from sepo_ray.tasks.pretrain import DenoiserTraining, pretrain_denoiser, save_generator

    torch.manual_seed(0)                                   # the model's initialisation is the caller's
    model = ConvDenoiser(hidden_dim=64, num_cnn_stacks=2, num_tokens=4)
    model, stats = pretrain_denoiser(model, tokens, DenoiserTraining(steps=2000))   # tokens (N, L) long
    save_generator(model, "pretrained/mytask", card={"name": "generator", **stats})

The loop (as the DNA task's generator is trained): AdamW, linear warm-up then cosine decay to lr / 20, the
continuous-time MDLM loss with antithetic times (:func:`sepo_ray.diffusion.mdlm_loss`, MDLM Sec. 3.2) per token,
optional augmentation of each batch, gradient-norm clipping, a progress line every ``log_every`` steps. One
``torch.Generator`` seeded with ``training.seed`` draws, in this order, the data order, the augmentation, the
times and the masks; nothing here reseeds torch's global RNG (seed it before building the model).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

#: ``augment(x0 (B, L) long, generator) -> (B, L) long``: e.g. a random reverse complement.
Augment = Callable[[Tensor, torch.Generator], Tensor]
GENERATOR_FILE = "generator.safetensors"
CARD_FILE = "generator.json"


@dataclass(frozen=True)
class DenoiserTraining:
    """MDLM pretraining of a denoiser (AdamW; linear warm-up, then cosine decay to lr / 20)."""

    batch_size: int = 64  #: sequences per optimiser step
    steps: int = 1000  #: optimiser steps
    lr: float = 2e-3  #: peak AdamW learning rate (per step, reached at the end of the warm-up)
    warmup_steps: int = 100  #: optimiser steps of linear warm-up from lr / warmup_steps to lr
    weight_decay: float = 0.0  #: AdamW decoupled weight decay (fraction of the weight per unit of lr)
    grad_clip: float = 1.0  #: largest global L2 norm of the loss gradient (loss in nats per token)
    seed: int = 0  #: seed of the torch.Generator behind data order, augmentation, times and masks
    log_every: int = 50  #: optimiser steps between progress lines (also the window of the final loss)

    def validate(self) -> DenoiserTraining:
        """Checks each field's range; ValueError naming the field. Returns self."""
        for name in ("batch_size", "steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.lr > 0 or not self.grad_clip > 0 or self.weight_decay < 0:
            raise ValueError(
                f"lr and grad_clip must be > 0 and weight_decay >= 0, got {self.lr}, {self.grad_clip}, "
                f"{self.weight_decay}"
            )
        return self

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): lr (step + 1) / warmup_steps during the warm-up,
        then lr (0.05 + 0.95 (1 + cos(pi f)) / 2), f = (step - warmup) / (steps - warmup) in [0, 1)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        frac = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def _check_tokens(model: nn.Module, tokens: Tensor) -> int:
    """ValueError (one line) unless tokens is a non-empty LongTensor (N, L) in 0..m-1. -> m."""
    num_tokens = getattr(model, "num_tokens", None)
    if num_tokens is None:
        raise ValueError(
            f"model must expose num_tokens (clean vocabulary size m), got {type(model).__name__}"
        )
    if not isinstance(tokens, Tensor) or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be a LongTensor (N, L), got {getattr(tokens, 'dtype', type(tokens))}")
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape (N, L), got {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise ValueError(f"tokens is empty: shape {tuple(tokens.shape)}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= num_tokens:
        raise ValueError(
            f"tokens must lie in 0..{num_tokens - 1} (model.num_tokens = {num_tokens}), got {lo}..{hi}"
        )
    return int(num_tokens)


def pretrain_denoiser(
    model: nn.Module,
    tokens: Tensor,
    training: DenoiserTraining = DenoiserTraining(),
    augment: Augment | None = None,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict]:
    """Train ``model`` in place with the continuous-time MDLM loss on ``tokens``; -> (model in eval mode, stats).

    model: ``model(z (B, L) long in 0..m) -> logits (B, L, m)`` with ``model.num_tokens`` = m (MASK = m), e.g.
    :class:`~sepo_ray.models.ConvDenoiser`. tokens: LongTensor (N, L) of clean ids in 0..m-1. Each step takes the
    next ``batch_size`` rows of a seeded permutation (a fresh one when fewer rows are left; all N rows when
    N < batch_size), applies ``augment(x0 (B, L), generator) -> (B, L)`` when given, and minimises

        NELBO(x0) / L = E_t [ dsigma(t) / expm1(sigma(t)) sum_{l: z_l = M} -log p_theta(x0_l | z_t) ] / L

    in nats per token, with B antithetic times (MDLM Sec. 3.2, Eq. 10). stats: ``final_train_nelbo_bits_per_token``
    (mean of the last ``log_every`` steps, / ln 2), ``training_time_s`` {``wall``, ``process_cpu``}, ``steps``.
    Runs on the model's device. ValueError (one line) on a bad model, tokens or training config.
    """
    from sepo_ray.diffusion import LogLinearSchedule, MaskingProcess, mdlm_loss

    training.validate()
    num_tokens = _check_tokens(model, tokens)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    device = next(model.parameters(), torch.empty(0)).device
    gen = torch.Generator(device=device).manual_seed(training.seed)
    process = MaskingProcess(num_tokens, LogLinearSchedule())
    x_all = tokens.to(device)  # (N, L)
    length, steps, batch = x_all.shape[1], training.steps, training.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    perm, pos, running = torch.randperm(len(x_all), generator=gen, device=device), 0, []
    model.train()
    for step in range(steps):
        if pos + batch > len(perm):
            perm, pos = torch.randperm(len(x_all), generator=gen, device=device), 0
        x0 = x_all[perm[pos : pos + batch]]  # (B, L)
        pos += batch
        if augment is not None:
            shape, x0 = x0.shape, augment(x0, gen)  # (B, L)
            if x0.shape != shape:
                raise ValueError(f"augment must return shape {tuple(shape)}, got {tuple(x0.shape)}")
        for group in opt.param_groups:
            group["lr"] = training.lr_at(step)
        loss = mdlm_loss(model, x0, process, generator=gen, antithetic=True).mean() / length  # nats / token
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        opt.step()
        running.append(loss.item())
        if (step + 1) % training.log_every == 0 or step + 1 == steps:
            bits = np.mean(running[-training.log_every :]) / math.log(2)
            log(
                f"step {step + 1}/{steps}  train NELBO {bits:.4f} bits/token  "
                f"{time.perf_counter() - wall0:.0f}s wall"
            )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    model.eval()
    return model, {
        "final_train_nelbo_bits_per_token": float(np.mean(running[-training.log_every :]) / math.log(2)),
        "training_time_s": {"wall": wall, "process_cpu": cpu},
        "steps": steps,
    }


MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")


def check_output_folder(folder: str | Path, overwrite: bool = False) -> Path:
    """Before any pretraining starts: refuse (ValueError, one line) a folder inside the installed ``sepo_ray``
    package, whose shipped artifacts are never written over, and, unless ``overwrite``, a folder that already holds
    model files (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.ckpt``, at any depth). Returns the folder."""
    import sepo_ray

    folder = Path(folder).expanduser()
    package = Path(sepo_ray.__file__).resolve().parent
    where = folder.resolve()
    if where == package or package in where.parents:
        raise ValueError(
            f"--output {folder} is inside the installed sepo_ray package ({package}), whose shipped artifacts are "
            "never written over; write elsewhere"
        )
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {folder} is a file, not a folder")
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in MODEL_SUFFIXES)
    if found and not overwrite:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ValueError(
            f"--output {folder} already holds model files ({shown}): pass --overwrite to replace them"
        )
    return folder


def save_generator(
    model: nn.Module, folder: str | Path, card: dict | None = None, *, overwrite: bool = False
) -> Path:
    """Write ``folder/generator.safetensors`` (:func:`sepo_ray.models.save_model`) and, given ``card``, the card
    ``folder/generator.json`` (``card`` + the weights' ``file_sha256``). -> the weights' path.

    Refuses (ValueError, one line) a folder inside the installed ``sepo_ray`` package (shipped artifacts are never
    written over) and a folder that holds ``generator.safetensors`` or ``generator.json`` already, unless
    ``overwrite`` (which also removes a stale ``generator.json`` when no card is given).
    """
    from sepo_ray.models import save_model

    folder = Path(folder).expanduser()
    check_output_folder(folder, overwrite=True)  # never inside the package; existing files are checked below
    path, card_path = folder / GENERATOR_FILE, folder / CARD_FILE
    existing = [p.name for p in (path, card_path) if p.exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{folder} already holds {', '.join(existing)}: use another folder, or overwrite it explicitly "
            "(overwrite=True; a pretraining command's --overwrite)"
        )
    if card is not None:
        json.dumps(card)  # a card that cannot be written fails before the weights are
    save_model(model, path)
    if card is None:
        card_path.unlink(missing_ok=True)
    else:
        card = {**card, "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    return path


__all__ = ["Augment", "DenoiserTraining", "check_output_folder", "pretrain_denoiser", "save_generator"]
