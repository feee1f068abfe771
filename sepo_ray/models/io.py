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
    path.chmod(0o644)  # readable by everyone, like any packaged file
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


PRETRAINED = {"pretrained": "generator", "dna": "generator"}


def denoiser_file(name_or_path: str | Path = "pretrained") -> Path:
    """The ``.safetensors`` file :func:`load_denoiser` reads for ``name_or_path`` (same rules, same errors)."""
    if str(name_or_path) in PRETRAINED:
        path = (
            Path(__file__).resolve().parent.parent
            / "artifacts"
            / "dna"
            / f"{PRETRAINED[str(name_or_path)]}.safetensors"
        )
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; rebuild it with: python -m sepo_ray.pretrain dna --only generator"
            )
    else:
        path = Path(name_or_path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        named = [f for f in files if f.stem in ("generator", "denoiser", "model")]
        if len(named) == 1 or len(files) == 1:
            path = (named or files)[0]
        else:
            raise ValueError(
                f"name_or_path: directory {path} holds {len(files)} .safetensors files "
                f"({[f.name for f in files]}); pass the generator's file"
            )
    if not path.is_file():
        raise ValueError(
            f"name_or_path must be 'pretrained', a .safetensors file or a directory, got {name_or_path!r}"
        )
    return path


def load_denoiser(name_or_path: str | Path = "pretrained", device: str | torch.device = "cpu") -> nn.Module:
    """Load a DNA denoiser (protocol: ``model(z (B, L)) -> logits (B, L, m)``, ``model.num_tokens``), eval mode.

    ``name_or_path``:
      - ``"pretrained"`` (or ``"dna"``): the shipped generator ``sepo_ray/artifacts/dna/generator.safetensors``;
      - a ``.safetensors`` file written by :func:`save_model` (class and config in its header);
      - a ``.safetensors`` file holding DRAKES backbone weights (keys ``linear.weight``, ``convs.0.weight``, ...,
        optionally prefixed ``backbone.``), see :func:`~sepo_ray.models.dnaconv.from_drakes_state_dict`;
      - a directory holding exactly one ``*.safetensors`` file (or one named generator/denoiser/model).
    """
    from .dnaconv import from_drakes_state_dict

    path = denoiser_file(name_or_path)
    meta = read_metadata(path)
    if "class" in meta:
        model = load_model(path, device)
    else:
        model = from_drakes_state_dict(load_file(str(path), device="cpu")).to(device).eval()
    if not hasattr(model, "num_tokens"):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a denoiser (no num_tokens attribute)")
    return model
