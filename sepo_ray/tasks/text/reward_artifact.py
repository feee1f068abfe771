"""Writing the text reward model's folder: weights rounded to the stored dtype, a Hugging Face folder whose config
says float32, ``card.json`` with the weights' hash, all replaced atomically (a failure leaves the old folder).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
from pathlib import Path

import torch

from .corpus import sha256_bytes


def round_to_store_dtype(model, store_dtype: str) -> float:
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


def save_folder(model, folder: Path, store_dtype: str) -> None:
    """``save_pretrained`` (safetensors) with weights in ``store_dtype`` and a config that says float32."""
    copy.deepcopy(model).to(getattr(torch, store_dtype)).save_pretrained(folder, safe_serialization=True)
    config = copy.deepcopy(model.config)
    config.dtype, config.architectures = torch.float32, [type(model).__name__]
    # dtype float32: from_pretrained (dtype "auto" reads it from the config) loads the weights as float32
    config.save_pretrained(folder)
    (folder / "model.safetensors").chmod(0o644)


def environment(threads: int) -> dict:
    """Versions and thread count the card records (training is deterministic for a seed and thread count)."""
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": threads,
    }


def fill_folder(folder: Path, model, store_dtype: str, card: dict) -> None:
    """Write ``folder``: the HF folder (:func:`save_folder`) and ``card.json`` (``card`` + file hash and size)."""
    save_folder(model, folder, store_dtype)
    weights = folder / "model.safetensors"
    card["file_sha256"] = sha256_bytes(weights.read_bytes())
    card["file_bytes"] = weights.stat().st_size
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def write_atomically(out_dir: Path, overwrite: bool, fill) -> None:
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
