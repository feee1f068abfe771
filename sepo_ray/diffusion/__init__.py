"""Masked (absorbing) discrete diffusion: schedule, forward process, scorable sampler, likelihood bounds.

Pure torch/numpy; no Ray.
"""

from .elbo import elbo, mdlm_loss
from .process import MaskingProcess, q_sample
from .sampler import (
    CorrectorResult,
    Path,
    Sample,
    StepResult,
    corrector_step,
    path_ops,
    remask_probability,
    remask_step,
    sample,
    score_path,
    step,
    time_grid,
    unmask_probability,
)
from .schedule import LogLinearSchedule

__all__ = [
    "CorrectorResult",
    "LogLinearSchedule",
    "MaskingProcess",
    "Path",
    "Sample",
    "StepResult",
    "corrector_step",
    "elbo",
    "mdlm_loss",
    "path_ops",
    "q_sample",
    "remask_probability",
    "remask_step",
    "sample",
    "score_path",
    "step",
    "time_grid",
    "unmask_probability",
]
