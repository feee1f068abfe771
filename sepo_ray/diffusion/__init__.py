"""Masked (absorbing) discrete diffusion: schedule, forward process, scorable sampler, likelihood bounds.

The score-entropy family (SEDD, absorbing graph) lives in `score_entropy` (a namespace: its `sample`,
`score_path`, `elbo`, `q_sample`, `step` mirror the masked family's names).

Pure torch/numpy; no Ray.
"""

from . import score_entropy
from .elbo import elbo, elbo_states, elbo_token_log_probs, mdlm_loss
from .process import MaskingProcess, q_sample
from .sampler import Path, Sample, path_ops, sample, score_path, score_transitions, time_grid
from .schedule import LogLinearSchedule
from .score_entropy import LogLinearNoise, MaskedView, score_entropy_loss
from .transitions import (
    CorrectorResult,
    StepResult,
    corrector_step,
    remask_probability,
    remask_step,
    step,
    unmask_probability,
)

__all__ = [
    "CorrectorResult",
    "LogLinearNoise",
    "LogLinearSchedule",
    "MaskedView",
    "MaskingProcess",
    "Path",
    "Sample",
    "StepResult",
    "corrector_step",
    "elbo",
    "elbo_states",
    "elbo_token_log_probs",
    "mdlm_loss",
    "path_ops",
    "q_sample",
    "remask_probability",
    "remask_step",
    "sample",
    "score_entropy",
    "score_entropy_loss",
    "score_path",
    "score_transitions",
    "step",
    "time_grid",
    "unmask_probability",
]
