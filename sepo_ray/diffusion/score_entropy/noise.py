"""Score-entropy family: the log-linear noise, the absorbing graph's forward process and reverse rates, the
per-position law of a reverse step, and the helpers that call a score net (see the package docstring)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..schedule import LogLinearSchedule

METHODS = ("analytic", "euler")


# ----------------------------------------------------------------------------------------------------------
# Noise and the forward process
# ----------------------------------------------------------------------------------------------------------


class LogLinearNoise(LogLinearSchedule):
    """SEDD's log-linear noise: total noise sigma(t) and its rate dsigma(t), t in [0, 1].

        sigma(t) = -log(1 - (1 - eps) t),   dsigma(t) = (1 - eps) / (1 - (1 - eps) t),

    so alpha_t = exp(-sigma(t)) = 1 - (1 - eps) t is the masked family's `LogLinearSchedule` (this is a subclass:
    one object serves both families); a token is MASK at time t w.p. 1 - e^{-sigma(t)} = (1 - eps) t.
    """

    def total_noise(self, t: float | Tensor) -> float | Tensor:
        """sigma(t) = -log1p(-(1 - eps) t); float in, float out; Tensor in, Tensor (same shape) out."""
        _check_time(t)
        if isinstance(t, Tensor):
            return -torch.log1p(-(1.0 - self.eps) * t)
        return -math.log1p(-(1.0 - self.eps) * t)

    def rate_noise(self, t: float | Tensor) -> float | Tensor:
        """dsigma(t) = (1 - eps) / (1 - (1 - eps) t)."""
        _check_time(t)
        return (1.0 - self.eps) / (1.0 - (1.0 - self.eps) * t)

    def __call__(self, t: float | Tensor) -> tuple[float | Tensor, float | Tensor]:
        """(sigma(t), dsigma(t)), the SEDD ``Noise`` convention."""
        return self.total_noise(t), self.rate_noise(t)

    def __repr__(self) -> str:
        return f"LogLinearNoise(eps={self.eps})"


def _check_time(t) -> None:
    if not isinstance(t, Tensor) and not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"t must lie in [0, 1], got {t}")


def q_sample(
    x0: Tensor, sigma: float | Tensor, mask_id: int, generator: torch.Generator | None = None
) -> Tensor:
    """Forward perturbation of the absorbing graph (SEDD ``sample_transition``): z ~ p_{sigma|0}(. | x0),

        z_l = MASK w.p. 1 - e^{-sigma}, else x0_l, independently over l.

    x0 (B, L) long in 0..m-1; sigma float or (B,) total noise; -> z (B, L) long. Draws one float64 uniform per token
    in the order of `process.MaskingProcess.q_sample` (same generator, same mask).
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape (B, L), got {tuple(x0.shape)}")
    sigma = _sigma_vector(sigma, x0.shape[0], x0.device, torch.float64, "sigma")  # (B,)
    move = -torch.expm1(-sigma)[:, None]  # (B, 1) 1 - e^{-sigma}
    u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=torch.float64)  # (B, L)
    return torch.where(u < move, torch.full_like(x0, mask_id), x0)  # (B, L)


# ----------------------------------------------------------------------------------------------------------
# Small helpers: the net's MASK id, device, dtype, sigma
# ----------------------------------------------------------------------------------------------------------


def mask_id_of(net) -> int:
    """MASK id of a score net: ``net.mask_id``, else ``net.vocab_size - 1`` (V), else ``net.num_tokens`` (m)."""
    for name, shift in (("mask_id", 0), ("vocab_size", -1), ("num_tokens", 0)):
        value = getattr(net, name, None)
        if value is not None:
            return int(value) + shift
    raise ValueError("net must expose mask_id, vocab_size (V, MASK = V - 1) or num_tokens (m)")


def _net_device(net) -> torch.device:
    for tensors in (getattr(net, "parameters", None), getattr(net, "buffers", None)):
        if tensors is not None:
            for p in tensors():
                return p.device
    return torch.device("cpu")


def _net_dtype(net) -> torch.dtype:
    """dtype sigma is handed in: the net's floating parameter (then buffer) dtype, at least float32."""
    for tensors in (getattr(net, "parameters", None), getattr(net, "buffers", None)):
        if tensors is not None:
            for p in tensors():
                if p.is_floating_point():
                    return torch.promote_types(p.dtype, torch.float32)
    return torch.float32


def _sigma_vector(sigma, batch: int, device, dtype, name: str) -> Tensor:
    """float or (B,) / (1,) -> (B,) tensor; ValueError naming `name` otherwise."""
    sigma = torch.as_tensor(sigma, device=device, dtype=dtype).reshape(-1)
    if sigma.numel() == 1:
        sigma = sigma.expand(batch)
    if sigma.shape != (batch,):
        raise ValueError(f"{name} must be one value or have shape ({batch},), got {sigma.numel()} values")
    return sigma  # (B,)


def _noise_pair(noise, t: float) -> tuple[float, float]:
    sigma, dsigma = noise(t)
    return float(sigma), float(dsigma)


def sigma_from_mask(z: Tensor, mask_id: int, noise=None) -> Tensor:
    """Noise level at which z's masked fraction is typical: sigma = min(-log(1 - f), sigma(1)), f = #MASK / L.

    f is clamped to >= 1/L, so a fully clean z gets the level of one mask (sigma = 0 would make SEDD's output
    shift -log expm1(sigma) infinite). z (B, L) long -> (B,) float64. Used by sigma="auto".
    """
    noise = noise if noise is not None else LogLinearNoise()
    length = z.shape[-1]
    frac = (z == mask_id).sum(-1).double().clamp(min=1.0) / length  # (B,)
    sigma_max = _noise_pair(noise, 1.0)[0]
    return (-torch.log1p(-frac.clamp(max=1.0 - 1e-12))).clamp(max=sigma_max)  # (B,)


def _resolve_sigma(sigma, z: Tensor, mask_id: int, noise, dtype) -> Tensor:
    """sigma = "auto" (`sigma_from_mask`), a float, or (B,) -> (B,) in the net's dtype."""
    if isinstance(sigma, str):
        if sigma != "auto":
            raise ValueError(f"sigma must be 'auto', a float or a (B,) tensor, got {sigma!r}")
        return sigma_from_mask(z, mask_id, noise).to(device=z.device, dtype=dtype)  # (B,)
    value = torch.as_tensor(sigma, dtype=torch.float64)
    if (value <= 0).any() or not torch.isfinite(value).all():
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    return _sigma_vector(value, z.shape[0], z.device, dtype, "sigma")  # (B,)


def _call(net, z: Tensor, sigma: Tensor) -> Tensor:
    """net(z, sigma) with a shape check: (B, L), (B,) -> (B, L, V)."""
    log_score = net(z, sigma)  # (B, L, V)
    if log_score.dim() != 3 or log_score.shape[:2] != z.shape:
        raise ValueError(f"net must return (B, L, V) = {tuple(z.shape)} + (V,), got {tuple(log_score.shape)}")
    return log_score


def _float(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


# ----------------------------------------------------------------------------------------------------------
# Reverse rates and the law of one reverse step
# ----------------------------------------------------------------------------------------------------------


def reverse_rate(log_score: Tensor, z: Tensor, dsigma: float | Tensor) -> Tensor:
    """Reverse rate of the absorbing graph from z to z with position l set to clean v (SEDD ``reverse_rate``):

        Q_bar_t(z -> z^{l <- v}) = dsigma(t) s_theta(z)_{l, v}  if z_l = MASK,  0 if z_l is clean.

    log_score (B, L, V), z (B, L) long (MASK = V - 1), dsigma float or (B,) -> (B, L, m) rates, m = V - 1.
    The total rate out of z is their sum; the App. D.2 KL integrand is built from these.
    """
    if log_score.dim() != 3 or log_score.shape[:2] != z.shape:
        raise ValueError(f"log_score must have shape {tuple(z.shape)} + (V,), got {tuple(log_score.shape)}")
    mask_id = log_score.shape[-1] - 1
    scores = _float(log_score[..., :mask_id]).exp()  # (B, L, m)
    dsigma = _sigma_vector(dsigma, z.shape[0], z.device, scores.dtype, "dsigma")[:, None, None]  # (B, 1, 1)
    return torch.where((z == mask_id)[..., None], dsigma * scores, torch.zeros_like(scores))  # (B, L, m)


def _check_times(t: float, s: float) -> None:
    if not 0.0 <= s < t <= 1.0:
        raise ValueError(f"times must satisfy 0 <= s < t <= 1, got t={t}, s={s}")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def step_scale(t: float, s: float, noise, method: str = "analytic") -> float:
    """c(t, s): analytic expm1(sigma(t) - sigma(s)), Euler (t - s) dsigma(t); weight of a move is c s_{l, v}."""
    _check_method(method)
    _check_times(t, s)
    sigma_t, dsigma_t = _noise_pair(noise, t)
    if method == "euler":
        return (t - s) * dsigma_t
    return math.expm1(sigma_t - _noise_pair(noise, s)[0])


def _masked_law(log_score: Tensor, t: float, s: float, noise, method: str) -> tuple[Tensor, Tensor]:
    """The step law at a masked position: (log P_l(v) for v < m (B, L, m), log P_l(MASK) (B, L)).

    s > 0 (c = `step_scale`, S_l = sum_{u < m} s_{l, u}; clamp-and-normalise as SEDD's ``sample_categorical``):
        log P_l(v) = log s_{l, v} + log c - log max(1, c S_l),   log P_l(MASK) = log max(1 - c S_l, 0);
    s = 0 (final denoise): log P_l(v) = log s_{l, v} - log S_l, log P_l(MASK) = -inf.
    """
    mask_id = log_score.shape[-1] - 1
    scores = _float(log_score[..., :mask_id])  # (B, L, m)
    log_total = torch.logsumexp(scores, dim=-1)  # (B, L) log S_l
    if s == 0.0:
        return scores - log_total[..., None], torch.full_like(log_total, -math.inf)  # (B, L, m), (B, L)
    log_c = math.log(step_scale(t, s, noise, method))
    log_a = log_total + log_c  # (B, L) log(c S_l)
    log_tok = scores + log_c - torch.relu(log_a)[..., None]  # (B, L, m)
    safe = torch.log(-torch.expm1(log_a.clamp(max=-torch.finfo(scores.dtype).tiny)))  # (B, L) no NaN gradient
    return log_tok, torch.where(log_a < 0, safe, torch.full_like(safe, -math.inf))  # (B, L, m), (B, L)


def transition_log_probs(
    log_score: Tensor, z: Tensor, t: float, s: float, noise=None, method: str = "analytic"
) -> Tensor:
    """Per-position law of the next state, log P_l(z'_l = v | z): (B, L, V), V = m + 1, MASK = m.

    Masked l, s > 0 (c = `step_scale`, S_l = sum_{u < m} s_{l, u}, clamp-and-normalise as SEDD):
        log P_l(v)    = log s_{l, v} + log c - log max(1, c S_l),      v < m
        log P_l(MASK) = log max(1 - c S_l, 0)                          (then normaliser 1)
    Masked l, s = 0 (final denoise): log P_l(v) = log s_{l, v} - log S_l, log P_l(MASK) = -inf.
    Clean l: log P_l(z_l) = 0, every other entry -inf. Rows sum to 1 (in probability). Dense form, for
    enumeration and rate-level code; `step` uses the same law without the (B, L, V) temporaries.
    """
    noise = noise if noise is not None else LogLinearNoise()
    if log_score.dim() != 3 or log_score.shape[:2] != z.shape:
        raise ValueError(f"log_score must have shape {tuple(z.shape)} + (V,), got {tuple(log_score.shape)}")
    _check_method(method)
    _check_times(t, s)
    mask_id = log_score.shape[-1] - 1
    log_tok, log_stay = _masked_law(log_score, t, s, noise, method)  # (B, L, m), (B, L)
    masked_logp = torch.cat([log_tok, log_stay[..., None]], dim=-1)  # (B, L, V)
    own = torch.arange(mask_id + 1, device=z.device) == z[..., None]  # (B, L, V)
    clean_logp = torch.zeros_like(masked_logp).masked_fill(~own, -math.inf)  # (B, L, V)
    return torch.where((z == mask_id)[..., None], masked_logp, clean_logp)  # (B, L, V)
