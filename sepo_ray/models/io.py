"""Save / load models as safetensors (never pickle) with the class name and config in the header metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .conv import ConvDenoiser

#: class name (as written in a file's header) -> class, for the classes known in this process; installed
#: packages declare theirs in the entry-point group ``sepo_ray.models`` (``ClassName = "module:Class"``), read when
#: a file names a class not loaded yet.
MODEL_CLASSES: dict[str, type[nn.Module]] = {"ConvDenoiser": ConvDenoiser}
ENTRY_POINT_GROUP = "sepo_ray.models"


def register_model(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``cls`` savable and loadable by name (its ``__name__``); returns it unchanged."""
    known = MODEL_CLASSES.get(cls.__name__)
    if known is not None and known is not cls:
        raise ValueError(f"a model class named {cls.__name__!r} is registered already ({known.__module__})")
    MODEL_CLASSES[cls.__name__] = cls
    return cls


def _model_class(name: str) -> type[nn.Module]:
    from sepo_ray.runtime import entry_point_specs, import_object

    if name not in MODEL_CLASSES:  # a class an installed package declares, imported on first use
        declared = entry_point_specs(ENTRY_POINT_GROUP)
        if name not in declared:
            raise ValueError(f"class_name must be one of {sorted({*MODEL_CLASSES, *declared})}, got {name!r}")
        MODEL_CLASSES.setdefault(name, import_object(declared[name], f"model class {name!r}"))
    return MODEL_CLASSES[name]


def build_model(class_name: str, config: dict) -> nn.Module:
    """Instantiate a registered model class from its config dict; unknown names raise ValueError."""
    return _model_class(class_name)(**config)


def save_model(model: nn.Module, path: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s state dict to ``path`` (.safetensors); header metadata holds class and config (JSON)."""
    path = Path(path)
    name = type(model).__name__
    if MODEL_CLASSES.get(name) is not type(model):
        raise ValueError(f"model must be one of {sorted(MODEL_CLASSES)} (see register_model), got {name}")
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


def model_file(path: str | Path) -> Path:
    """The ``.safetensors`` file behind ``path``: the file itself, or the one model file in a directory
    (one named generator / denoiser / model if there are several). ValueError says what is wrong."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        named = [f for f in files if f.stem in ("generator", "denoiser", "model")]
        if len(named) == 1 or len(files) == 1:
            path = (named or files)[0]
        else:
            raise ValueError(
                f"directory {path} holds {len(files)} .safetensors files ({[f.name for f in files]}); "
                "pass the generator's file"
            )
    if not path.is_file():
        raise ValueError(
            f"model weights must be a .safetensors file or a directory holding one, got {str(path)!r}"
        )
    return path
