"""MDLM pretraining of the DNA generator (the ``generator`` part of ``python -m sepo_ray.pretrain dna``).

The loop is the generic :func:`sepo_ray.tasks.pretrain.pretrain_denoiser` (AdamW, warm-up + cosine decay,
continuous-time MDLM loss with antithetic times) with random reverse complements as its augmentation; this module
adds the DNA model, the held-out bits/base figures and the artifact card.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sepo_ray.models import save_model
from sepo_ray.tasks.pretrain import DenoiserTraining, pretrain_denoiser

from .cards import environment, write_card
from .data import random_reverse_complement, split_tensors
from .data.dhs import SPLITS, DHSData
from .models import DNAConvDenoiser

#: optimiser steps between progress lines (and the window of the card's final training NELBO)
LOG_EVERY = 50


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
    train_split: str = (
        "all"  #: rows it learns from: "all" (as DRAKES) or "train_all" (no validation/test chromosome)
    )
    eval_sequences: int = 1000  #: held-out sequences for the bits/base figure
    eval_draws: int = 8  #: antithetic time draws per held-out sequence
    seed: int = 0

    @property
    def training(self) -> DenoiserTraining:
        """The optimisation part of this config, for :func:`~sepo_ray.tasks.pretrain.pretrain_denoiser`."""
        return DenoiserTraining(
            batch_size=self.batch_size,
            steps=self.steps,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            seed=self.seed,
            log_every=LOG_EVERY,
        )


def train_generator(
    data: DHSData, cfg: GeneratorConfig, out_dir: Path, threads: int, log=print, name: str = "generator"
) -> tuple[DNAConvDenoiser, dict]:
    """MDLM pretraining (continuous-time NELBO per token, antithetic times) on the rows of ``cfg.train_split``;
    writes ``out_dir/NAME.safetensors`` + ``NAME.json``. -> (model in eval mode, card)."""
    from sepo_ray.diffusion import LogLinearSchedule, MaskingProcess

    torch.manual_seed(cfg.seed)  # the initialisation; the loop draws from its own generator seeded alike
    model = DNAConvDenoiser(hidden_dim=cfg.hidden_dim, num_cnn_stacks=cfg.num_cnn_stacks)
    model, stats = pretrain_denoiser(
        model,
        data.tokens[data.split(cfg.train_split)],
        cfg.training,
        augment=random_reverse_complement if cfg.rc_augment else None,
        log=lambda msg: log(f"[generator] {msg}"),
    )
    process = MaskingProcess(model.num_tokens, LogLinearSchedule())
    heldout = {}
    for split in ("validation", "test"):
        x, _ = split_tensors(data, split)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))[: cfg.eval_sequences]
        heldout[split] = continuous_nelbo_bits(model, x[idx], process, cfg.eval_draws, seed=1234)
        log(f"[generator] {split} ({'/'.join(SPLITS[split])}) NELBO {heldout[split]:.4f} bits/base")
    save_model(model, out_dir / f"{name}.safetensors", {"name": f"dna_{name}"})
    time_s = stats["training_time_s"]
    clean = cfg.train_split != "all"
    rows = "all DHS rows" if not clean else f"the {cfg.train_split} rows (no validation or test chromosome)"
    card = {
        "name": name,
        "description": f"MDLM denoiser (DRAKES dilated-CNN family), time-unconditioned, pretrained on {rows}",
        "class": "DNAConvDenoiser",
        "model_config": model.config,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_config": asdict(cfg),
        "data": {
            "sha256": data.sha256,
            "rows": cfg.train_split,
            "num_train": len(data.split(cfg.train_split)),
        },
        "training_time_s": {"wall": round(time_s["wall"], 1), "process_cpu": round(time_s["process_cpu"], 1)},
        "final_train_nelbo_bits_per_base": stats["final_train_nelbo_bits_per_token"],
        "heldout": {
            "note": "held-out chromosomes: never seen in training"
            if clean
            else "the generator is trained on all rows (as DRAKES); these chromosomes are in its training set",
            "nelbo_bits_per_base": heldout,
            "num_sequences": cfg.eval_sequences,
            "draws_per_sequence": cfg.eval_draws,
        },
        "environment": environment(threads),
    }
    write_card(out_dir, name, card)
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
