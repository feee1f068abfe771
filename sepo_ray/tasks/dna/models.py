"""The DNA task's networks: the DRAKES-layout generator and loading of DRAKES weights, checkpoints as downloaded.

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
from sepo_ray.models.checkpoints import ema_state_dict, read_checkpoint, split_weights_spec

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"


@register_model
class DNAConvDenoiser(ConvDenoiser):
    """The DRAKES MDLM backbone (dilated CNN) over A, C, G, T and MASK; see :class:`ConvDenoiser`."""


def from_drakes_state_dict(
    state_dict: Mapping[str, Tensor], time_conditioning: bool = False
) -> DNAConvDenoiser:
    """Build a :class:`DNAConvDenoiser` from DRAKES backbone weights.

    Accepts the backbone's own state dict or a whole MDLM state dict (keys prefixed ``backbone.``; other keys are
    ignored), e.g. :func:`~sepo_ray.models.checkpoints.read_checkpoint` ``(path).state_dict``. Hidden size,
    number of stacks and the time embedding are inferred from the tensor shapes; ``time_conditioning``: evaluate
    the time embedding at the noise level z implies (a checkpoint trained with MDLM ``time_conditioning=True``)
    instead of at 0 (DRAKES' released config), see :class:`~sepo_ray.models.ConvDenoiser`.
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
    time_embedding = "time_embedder.1.weight" in sd
    if time_conditioning and not time_embedding:
        raise ValueError("time_conditioning=True, but these DRAKES weights have no time embedding")
    model = DNAConvDenoiser(
        hidden_dim=int(hidden),
        num_cnn_stacks=num_convs // 5,
        num_tokens=int(alphabet) - 1,
        time_embedding=time_embedding,
        time_conditioning=bool(time_conditioning),
    )
    model.load_state_dict(sd, strict=True)
    return model


def from_drakes_checkpoint(
    path: str | Path, weights: str = "model", time_conditioning: bool | None = None
) -> DNAConvDenoiser:
    """A DRAKES / MDLM Lightning ``.ckpt`` as downloaded (read by :func:`read_checkpoint`, nothing unpickled).

    ``weights``: "model" (``state_dict``) or "ema" (its ``ema.shadow_params``, mapped onto the backbone's
    trainable parameters in MDLM's order, :meth:`~sepo_ray.models.ConvDenoiser.reference_parameter_order`).
    ``time_conditioning``: None reads ``config.time_conditioning`` from the checkpoint's hyper-parameters (False
    when unreadable, DRAKES' released config); True / False forces it. ValueError: one line, naming the file.
    """
    ckpt = read_checkpoint(path)
    if time_conditioning is None:
        found = ckpt.hparam("time_conditioning")
        time_conditioning = found if isinstance(found, bool) else False
    try:
        model = from_drakes_state_dict(ckpt.state_dict, time_conditioning=time_conditioning)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{ckpt.path}: {str(e).strip().splitlines()[0]}") from None
    if weights == "ema":
        if ckpt.ema is None:
            raise ValueError(
                f"{ckpt.path} has no 'ema' entry: load its model weights (generator_weights=model)"
            )
        state = ema_state_dict(
            model.state_dict(), model.reference_parameter_order(), ckpt.ema["shadow_params"], str(ckpt.path)
        )
        model.load_state_dict(state, strict=True)
    elif weights != "model":
        raise ValueError(f"weights must be 'model' or 'ema', got {weights!r}")
    return model


#: generator names -> shipped artifact: "pretrained" is the clean generator (trained on the training chromosomes
#: only, so the validation and test rows are unseen); "pretrained_v1" the first one, trained on every row as DRAKES
#: does, kept to reproduce figures measured with it
PRETRAINED = {"pretrained": "generator_v2", "dna": "generator_v2", "pretrained_v1": "generator"}
_DRAKES_TOP_LEVEL = {"linear", "time_embedder", "time_layers", "convs", "norms", "final_conv"}


def denoiser_file(name_or_path: str | Path | None = None) -> Path:
    """The file :func:`load_denoiser` reads (a ``.safetensors`` or a ``.ckpt``; a ``#ema`` suffix is dropped);
    same rules, same errors."""
    if name_or_path is None or str(name_or_path) in PRETRAINED:
        name = PRETRAINED[str(name_or_path or "pretrained")]
        path = ARTIFACT_DIR / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; rebuild it with: python -m sepo_ray.pretrain dna --only {name}"
            )
        return path
    spec, weights = split_weights_spec(name_or_path)
    path = Path(spec)
    if path.is_dir() and not any(path.glob("*.safetensors")):
        ckpts = sorted(path.glob("*.ckpt"))
        if len(ckpts) > 1:
            raise ValueError(f"directory {path} holds {len(ckpts)} .ckpt files; pass the generator's file")
        path = ckpts[0] if ckpts else path
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise ValueError(f"generator checkpoint not found: {path}")
        return path
    if weights == "ema":
        raise ValueError(f"'#ema' takes the EMA copy of a training checkpoint (.ckpt), not {spec}")
    return model_file(path)


def load_denoiser(
    name_or_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    time_conditioning: bool | None = None,
) -> nn.Module:
    """Load a DNA denoiser (``model(z (B, L)) -> logits (B, L, 4)``, ``model.num_tokens``), eval mode.

    ``name_or_path``:
      - None, ``"pretrained"`` (or ``"dna"``): the shipped generator ``artifacts/generator.safetensors``;
      - a ``.safetensors`` file written by :func:`~sepo_ray.models.save_model` (class and config in its header);
      - a ``.safetensors`` file holding DRAKES backbone weights (keys ``linear.weight``, ``convs.0.weight``, ...,
        optionally prefixed ``backbone.``), see :func:`from_drakes_state_dict`;
      - a DRAKES / MDLM Lightning ``.ckpt`` as downloaded (``pretrained.ckpt``; also a ``torch.save``-d state
        dict such as DRAKES' fine-tuned ``model_*.ckpt``), its model weights, or with ``#ema`` appended
        (``pretrained.ckpt#ema``) its EMA copy; see :func:`from_drakes_checkpoint`;
      - a directory holding exactly one ``*.safetensors`` file (or one named generator/denoiser/model), or no
        safetensors and exactly one ``*.ckpt``.

    ``time_conditioning``: None keeps what the file says (a model file's config; a ``.ckpt``'s hyper-parameters;
    False for bare DRAKES weights); True / False forces it (the weights need a time embedding for True). From the command line, save the forced model once
    (``save_model(load_denoiser(path, time_conditioning=True), "generator.safetensors")``): the flag travels in
    the file's config.
    """
    path = denoiser_file(name_or_path)
    if path.suffix == ".ckpt":
        model = from_drakes_checkpoint(path, split_weights_spec(name_or_path)[1], time_conditioning)
        return model.to(device).eval()
    if "class" in read_metadata(path):
        model = load_model(path, device)
        if time_conditioning is not None:
            _force_time_conditioning(model, bool(time_conditioning), path)
    else:
        sd = load_file(str(path), device="cpu")
        model = from_drakes_state_dict(sd, bool(time_conditioning)).to(device).eval()
    if not hasattr(model, "num_tokens"):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a denoiser (no num_tokens attribute)")
    return model


def _force_time_conditioning(model: nn.Module, value: bool, path: Path) -> None:
    """Set a loaded ConvDenoiser's time_conditioning (ValueError, one line, when it cannot have it)."""
    if not isinstance(model, ConvDenoiser) or (value and not model.config["time_embedding"]):
        raise ValueError(f"{path}: time_conditioning=True needs a ConvDenoiser with a time embedding")
    model.config["time_conditioning"] = value
