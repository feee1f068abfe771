"""Generic denoisers and model files: safetensors with the class name and config in the header, never pickle.

Tasks register their own model classes with :func:`register_model` (so their files load by name). Training
checkpoints as downloaded (Lightning ``.ckpt``) are read by :func:`read_checkpoint` without unpickling objects.
"""

from .checkpoints import Checkpoint, read_checkpoint
from .conv import ConvDenoiser, noise_level_from_mask
from .io import MODEL_CLASSES, build_model, load_model, model_file, read_metadata, register_model, save_model
from .sedd import SEDDTransformer, load_sedd, sedd_kwargs_from_config

register_model(SEDDTransformer)

__all__ = [
    "MODEL_CLASSES",
    "Checkpoint",
    "ConvDenoiser",
    "SEDDTransformer",
    "build_model",
    "load_model",
    "load_sedd",
    "model_file",
    "noise_level_from_mask",
    "read_checkpoint",
    "read_metadata",
    "register_model",
    "save_model",
    "sedd_kwargs_from_config",
]
