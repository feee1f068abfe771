"""The DNA task's networks: the DRAKES-layout generator and loading of DRAKES backbone weights.

``DNAConvDenoiser`` is the generic :class:`~sepo_ray.models.ConvDenoiser` under the name its shipped files carry;
the oracle classifiers live in :mod:`.classifiers`. All of them are registered for ``load_model`` (and
declared in the entry-point group ``sepo_ray.models``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from sepo_ray.models import ConvDenoiser, load_model, model_file, read_metadata, register_model

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"


@register_model
class DNAConvDenoiser(ConvDenoiser):
    """The DRAKES MDLM backbone (dilated CNN) over A, C, G, T and MASK; see :class:`ConvDenoiser`."""


def from_drakes_state_dict(state_dict: Mapping[str, Tensor]) -> DNAConvDenoiser:
    """Build a :class:`DNAConvDenoiser` from DRAKES backbone weights.

    Accepts the backbone's own state dict or a whole MDLM state dict (keys prefixed ``backbone.``; other keys are
    ignored), e.g. ``torch.load("pretrained.ckpt", map_location="cpu", weights_only=True)["state_dict"]``.
    hidden size, number of stacks and the time embedding are inferred from the tensor shapes.
    """
    sd = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if k.split(".")[0] in _DRAKES_TOP_LEVEL}
    if "linear.weight" not in sd:
        raise ValueError(
            "state_dict has no 'linear.weight' (nor 'backbone.linear.weight'): not a DRAKES backbone"
        )
    hidden, alphabet = sd["linear.weight"].shape[:2]
    num_convs = len({k.split(".")[1] for k in sd if k.startswith("convs.")})
    if num_convs % 5:
        raise ValueError(f"state_dict has {num_convs} convs, expected a multiple of 5")
    model = DNAConvDenoiser(
        hidden_dim=int(hidden),
        num_cnn_stacks=num_convs // 5,
        num_tokens=int(alphabet) - 1,
        time_embedding="time_embedder.1.weight" in sd,
    )
    model.load_state_dict(sd, strict=True)
    return model


_DRAKES_TOP_LEVEL = {"linear", "time_embedder", "time_layers", "convs", "norms", "final_conv"}


def denoiser_file(name_or_path: str | Path | None = None) -> Path:
    """The ``.safetensors`` file :func:`load_denoiser` reads (same rules, same errors)."""
    if name_or_path is None or str(name_or_path) in ("pretrained", "dna"):
        path = ARTIFACT_DIR / "generator.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; rebuild it with: python -m sepo_ray.pretrain dna --only generator"
            )
        return path
    return model_file(name_or_path)


def load_denoiser(name_or_path: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Load a DNA denoiser (``model(z (B, L)) -> logits (B, L, 4)``, ``model.num_tokens``), eval mode.

    ``name_or_path``:
      - None, ``"pretrained"`` (or ``"dna"``): the shipped generator ``artifacts/generator.safetensors``;
      - a ``.safetensors`` file written by :func:`~sepo_ray.models.save_model` (class and config in its header);
      - a ``.safetensors`` file holding DRAKES backbone weights (keys ``linear.weight``, ``convs.0.weight``, ...,
        optionally prefixed ``backbone.``), see :func:`from_drakes_state_dict`;
      - a directory holding exactly one ``*.safetensors`` file (or one named generator/denoiser/model).
    """
    path = denoiser_file(name_or_path)
    if "class" in read_metadata(path):
        model = load_model(path, device)
    else:
        model = from_drakes_state_dict(load_file(str(path), device="cpu")).to(device).eval()
    if not hasattr(model, "num_tokens"):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a denoiser (no num_tokens attribute)")
    return model
