"""Score-entropy discrete diffusion (SEDD, Lou et al. 2024) on the absorbing graph, pure torch.

Network protocol. ``net(z, sigma) -> log_score``: z (B, L) long in 0..V-1 with MASK = V - 1 (m = V - 1 clean
tokens), sigma (B,) float total noise, log_score (B, L, V) float, log s_theta(z, sigma)_{l, v} ~ the log ratio
log p_sigma(z with z_l := v) - log p_sigma(z); the entry of the current token z_l is 0 (SEDD convention). The net
names its MASK by ``mask_id``, else ``vocab_size`` (V) or ``num_tokens`` (m) (`mask_id_of`).

Absorbing graph (SEDD ``graph_lib.Absorbing``). Forward rate dsigma(t) Q with Q(z_l -> MASK) = 1 per clean token:
at total noise sigma each token is MASK w.p. 1 - e^{-sigma}, independently. Only MASK -> clean moves exist in
reverse, so only the entries of clean v at MASKED positions enter any formula here. The exact score there is

    s(z)_{l, v} = e^{-sigma} / (1 - e^{-sigma}) * p_0(x_l = v | unmasked tokens of z) = p_0(v | .) / expm1(sigma),

a time factor times a time-independent conditional (Ou et al. 2024, "Your absorbing discrete diffusion secretly
models the conditional distributions of clean data"; SEDD's output shift -log expm1(sigma) - log(V - 1) is this
factor). Ratios of entries at one position cancel the factor: `log_scores` (the SEPO Hamming-1 ratios) and
`MaskedView` (softmax of the clean entries = the MDLM denoiser) rest on it.

Sampler (SEDD ``sampling.py``). Step k = T..1 goes from t_k = k/T to t_{k-1} (the masked family's
`sampler.time_grid`); per masked position, with c = expm1(sigma(t) - sigma(s)) (analytic, Tweedie tau-leaping,
SEDD ``AnalyticPredictor``: staggered score x transposed transition) or c = (t - s) dsigma(t) (Euler, SEDD
``EulerPredictor``), the weights are

    w_v = c s_{l, v} (v clean),   w_MASK = 1 - c sum_v s_{l, v},

clamped at 0 and normalised (SEDD's ``sample_categorical`` draws argmax_i w_i / Exp(1)_i, i.e. the law of
max(w, 0) / sum max(w, 0); a negative stay weight never wins). Clean positions never move. The last step (s = 0)
is SEDD's final denoise step: every MASK becomes v w.p. s_{l, v} / sum_u s_{l, u}, so no MASK is left; the grid
makes T network calls in all (SEDD: T predictor calls on linspace(1, eps) plus one denoise call). For the
log-linear noise expm1(sigma(t) - sigma(s)) = (alpha_s - alpha_t) / alpha_t = (t - s) dsigma(t): the two methods
are the same law; they differ for other noises. With exact scores c s_{l, v} = p_0(v | .) (alpha_s - alpha_t) /
(1 - alpha_t): the analytic step is the masked family's `sampler.step` on `MaskedView` (same law, tested).

Every step samples (z_next None) or scores a recorded transition, log P(z_next | z) = sum_l log P_l(z_next_l | z),
differentiable w.r.t. the net (DDPO ``ddim_step_with_logprob``), as the masked family's `sampler.step`.

Modules: `noise` (noise, forward process, reverse rates, step law), `sampler` (step, sample, score_path),
`objectives` (DWDSE loss, ELBO, log-scores, `MaskedView`).
"""

from ..sampler import Path, Sample
from ..transitions import StepResult
from .noise import (
    METHODS,
    LogLinearNoise,
    mask_id_of,
    q_sample,
    reverse_rate,
    sigma_from_mask,
    step_scale,
    transition_log_probs,
)
from .objectives import (
    MaskedView,
    elbo,
    log_scores,
    score_entropy,
    score_entropy_loss,
)
from .sampler import analytic_step, euler_step, sample, score_path, step

__all__ = [
    "LogLinearNoise",
    "METHODS",
    "MaskedView",
    "Path",
    "Sample",
    "StepResult",
    "analytic_step",
    "elbo",
    "euler_step",
    "log_scores",
    "mask_id_of",
    "q_sample",
    "reverse_rate",
    "sample",
    "score_entropy",
    "score_entropy_loss",
    "score_path",
    "sigma_from_mask",
    "step",
    "step_scale",
    "transition_log_probs",
]
