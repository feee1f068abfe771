"""Denoiser networks (the DNA CNN of the DRAKES generator) and the oracle classifiers."""

from .classifiers import (
    DilatedCNNClassifier,
    KmerFeatures,
    KmerMLPClassifier,
    canonical_kmer_index,
    strand_averaged_logits,
)
from .dnaconv import DNAConvDenoiser, from_drakes_state_dict
from .io import (
    MODEL_CLASSES,
    build_model,
    denoiser_file,
    load_denoiser,
    load_model,
    read_metadata,
    save_model,
)

__all__ = [
    "MODEL_CLASSES",
    "DNAConvDenoiser",
    "DilatedCNNClassifier",
    "KmerFeatures",
    "KmerMLPClassifier",
    "build_model",
    "denoiser_file",
    "canonical_kmer_index",
    "from_drakes_state_dict",
    "load_denoiser",
    "load_model",
    "read_metadata",
    "save_model",
    "strand_averaged_logits",
]
