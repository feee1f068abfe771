"""Save / load models as safetensors (never pickle) with the class name and config in the header metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .classifiers import DilatedCNNClassifier, KmerMLPClassifier
from .dnaconv import DNAConvDenoiser

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "DNAConvDenoiser": DNAConvDenoiser,
    "DilatedCNNClassifier": DilatedCNNClassifier,
    "KmerMLPClassifier": KmerMLPClassifier,
}


def build_model(class_name: str, config: dict) -> nn.Module:
    """Instantiate a registered model class from its config dict; unknown names raise ValueError."""
    if class_name not in MODEL_CLASSES:
        raise ValueError(f"class_name must be one of {sorted(MODEL_CLASSES)}, got {class_name!r}")
    return MODEL_CLASSES[class_name](**config)


def save_model(model: nn.Module, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s state dict to ``path`` (.safetensors); header metadata holds class and config (JSON)."""
    path = Path(path)
    name = type(model).__name__
    if name not in MODEL_CLASSES:
        raise ValueError(f"model must be one of {sorted(MODEL_CLASSES)}, got {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # BatchNorm's num_batches_tracked is int64 and fine for safetensors; nothing is pickled.
    meta = {"class": name, "config": json.dumps(model.config, sort_keys=True)}
    meta.update(extra_metadata or {})
    save_file(state, str(path), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata of a model file."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved with :func:`save_model` (class + config from the header), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    meta = read_metadata(path)
    if "class" not in meta or "config" not in meta:
        raise ValueError(f"{path} lacks 'class'/'config' metadata: not written by sepo_ray.models.save_model")
    model = build_model(meta["class"], json.loads(meta["config"]))
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model.to(device).eval()
