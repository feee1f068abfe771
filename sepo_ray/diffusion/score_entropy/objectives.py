"""Score-entropy objectives on the absorbing graph: the DWDSE loss, the ELBO, SEPO's log-scores, and the
masked-denoiser view of a SEDD net (see the package docstring for the conventions)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..elbo import _draw_times
from .noise import (
    LogLinearNoise,
    _call,
    _float,
    _net_dtype,
    _noise_pair,
    _resolve_sigma,
    _sigma_vector,
    mask_id_of,
    q_sample,
)

# ----------------------------------------------------------------------------------------------------------
# Denoising score entropy (training loss) and the ELBO
# ----------------------------------------------------------------------------------------------------------


def score_entropy(log_score: Tensor, z: Tensor, x0: Tensor, sigma: float | Tensor) -> Tensor:
    """Denoising score entropy of the absorbing graph per position (SEDD ``Absorbing.score_entropy``): (B, L).

    At masked l, with r = e^{-sigma} / (1 - e^{-sigma}) = 1 / expm1(sigma) the true ratio p(z^{l <- x0_l} | x0) /
    p(z | x0):
        DSE_l = sum_{v < m} s_{l, v} - r log s_{l, x0_l} + r (log r - 1);      0 at clean l.
    DSE_l >= s_{l, x0_l} - r log s_{l, x0_l} + r log r - r >= 0 (the convex s - r log s is least at s = r): the
    constant K(r) = r (log r - 1) makes it non-negative. E_{x0 | z} DSE is least at s_{l, v} = r p_0(v | z), the
    exact score. log_score (B, L, V), z, x0 (B, L) long, sigma float or (B,).
    """
    if log_score.dim() != 3 or log_score.shape[:2] != z.shape:
        raise ValueError(f"log_score must have shape {tuple(z.shape)} + (V,), got {tuple(log_score.shape)}")
    if x0.shape != z.shape:
        raise ValueError(f"x0 must have shape {tuple(z.shape)}, got {tuple(x0.shape)}")
    mask_id = log_score.shape[-1] - 1
    scores = _float(log_score[..., :mask_id])  # (B, L, m)
    sigma = _sigma_vector(sigma, z.shape[0], z.device, scores.dtype, "sigma")  # (B,)
    if (sigma <= 0).any():
        raise ValueError("sigma must be > 0 (r = 1 / expm1(sigma))")
    log_r = -torch.log(torch.expm1(sigma))[:, None]  # (B, 1)
    r = log_r.exp()  # (B, 1)
    pos = scores.exp().sum(dim=-1)  # (B, L)
    neg = r * scores.gather(-1, x0.clamp(0, mask_id - 1).unsqueeze(-1)).squeeze(-1)  # (B, L)
    dse = pos - neg + r * (log_r - 1.0)  # (B, L)
    return torch.where(z == mask_id, dse, torch.zeros_like(dse))  # (B, L)


def score_entropy_loss(
    net,
    x0: Tensor,
    noise=None,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    antithetic: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DWDSE pretraining loss of SEDD (``losses.get_loss_fn``), one time per sequence, nats:

        loss(x0) = dsigma(t) sum_l DSE_l(s_theta(z, sigma(t)), z, x0),   z ~ p_{sigma(t)|0}(. | x0),

    an unbiased estimate of the negative ELBO: E_t loss = int_0^1 dsigma(t) E_z sum_l DSE_l dt >= -log p(x0) (up
    to the t = 1 prior term). With exact scores dsigma DSE_l = dsigma / expm1(sigma) (-log p_0(x0_l | z)), the MDLM
    loss (`elbo.mdlm_loss`). t: (B,) in (0, 1], default U(0, 1] (antithetic: evenly spread); the draws (t, then
    the mask) follow `mdlm_loss`, so one generator seed gives the same (t, z) in both; pass t to draw it
    otherwise (e.g. SEDD's t ~ U[1e-3, 1]).
    x0 (B, L) long -> (loss (B,) differentiable, stats {"masked_fraction", "t_mean", "loss_mean"} detached).
    """
    noise = noise if noise is not None else LogLinearNoise()
    if x0.dim() != 2:
        raise ValueError(f"x0 must have shape (B, L), got {tuple(x0.shape)}")
    batch = x0.shape[0]
    mask_id = mask_id_of(net)
    if t is None:
        t = _draw_times(batch, antithetic, generator, x0.device)  # (B,)
    t = _sigma_vector(t, batch, x0.device, torch.float64, "t")  # (B,)
    if ((t <= 0) | (t > 1)).any():
        raise ValueError("t must lie in (0, 1]")
    sigma, dsigma = noise(t)  # (B,), (B,)
    z = q_sample(x0, sigma, mask_id, generator)  # (B, L)
    log_score = _call(net, z, sigma.to(_net_dtype(net)))  # (B, L, V)
    dse = score_entropy(log_score, z, x0, sigma)  # (B, L)
    loss = dsigma.to(dse.dtype) * dse.sum(dim=-1)  # (B,)
    stats = {
        "masked_fraction": (z == mask_id).double().mean().detach(),
        "t_mean": t.mean().detach(),
        "loss_mean": loss.mean().detach(),
    }
    return loss, stats


def elbo(
    net,
    x: Tensor,
    noise=None,
    num_draws: int = 16,
    generator: torch.Generator | None = None,
    antithetic: bool = True,
    batch_size: int | None = None,
) -> Tensor:
    """Score-entropy ELBO of SEDD (Lou et al. 2024, Thm 3.6), Monte Carlo over t, nats per sequence:

        ELBO(x) = - int_0^1 dsigma(t) E_{z ~ p_{sigma(t)|0}(.|x)} [ D(z, sigma(t)) ] dt,   D = sum_l DSE_l(s_theta, z, x).

    Estimator. dsigma dt = dsigma, and with u = 1 - e^{-sigma} a mask S of k = |S| positions has probability
    u^k (1 - u)^{L-k}, dsigma = du / (1 - u), so the integral is
        sum_S int_0^{u_max} u^{k-1} (1 - u)^{L-k} [u / (1 - u)] D(z_S, sigma(u)) du
        = E_{k ~ U{1..L}} (L / k) E_{S, u} [ 1{u <= u_max} u / (1 - u) D(z_S, sigma(u)) ],
    S uniform of size k and u ~ Beta(k, L - k + 1): draw L uniforms, u = the k-th smallest, S = the positions of the
    k smallest. The weight u / (1 - u) = 1 / r cancels the 1 / expm1(sigma) inside DSE, so the terms are bounded
    (exact scores: L/k sum_{l in S} -log p(x_l | x_{-S})); `score_entropy_loss` at t ~ U(0, 1] is unbiased for the
    same integral but its terms have a 1/t tail (infinite variance; SEDD's training draws t >= 1e-3). u_max = 1 - e^{-sigma(1)}:
    the t = 1 prior term is dropped, as SEDD's evaluation does (O(eps L) nats). With exact scores ELBO = log p(x) up to
    that term. It bounds the CTMC, not the T-step sampler (for that: `elbo.elbo` on `MaskedView`).
    antithetic: the n = num_draws counts k of a sequence cycle through 1..L from a random offset (stratified).
    Deterministic given the generator. x (B, L) long -> (B,) float, differentiable; batch_size chunks the B n rows.
    Divide by L ln 2 for bits per token.
    """
    noise = noise if noise is not None else LogLinearNoise()
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, L), got {tuple(x.shape)}")
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch, length = x.shape
    mask_id = mask_id_of(net)
    u_max = -math.expm1(-_noise_pair(noise, 1.0)[0])
    device = x.device
    if antithetic:
        offset = torch.randint(0, length, (batch, 1), generator=generator, device=device)  # (B, 1)
        k = (offset + torch.arange(num_draws, device=device)) % length + 1  # (B, n)
    else:
        k = torch.randint(1, length + 1, (batch, num_draws), generator=generator, device=device)  # (B, n)
    k = k.reshape(-1)  # (B n,)
    draws = torch.rand(
        k.shape[0], length, generator=generator, device=device, dtype=torch.float64
    )  # (B n, L)
    u_k = draws.sort(dim=-1).values.gather(-1, (k - 1)[:, None])  # (B n, 1) ~ Beta(k, L - k + 1)
    rows = x.repeat_interleave(num_draws, dim=0)  # (B n, L)
    z = torch.where(draws <= u_k, torch.full_like(rows, mask_id), rows)  # (B n, L), exactly k masked
    u = u_k.squeeze(-1).clamp(max=u_max)  # (B n,)
    sigma = -torch.log1p(-u)  # (B n,)
    weight = (u_k.squeeze(-1) <= u_max) * (length / k) * u / (1.0 - u)  # (B n,)
    chunk = rows.shape[0] if batch_size is None else batch_size
    dtype = _net_dtype(net)
    terms = []
    for z_c, x_c, s_c in zip(z.split(chunk), rows.split(chunk), sigma.split(chunk)):
        log_score = _call(net, z_c, s_c.to(dtype))  # (n_c, L, V)
        terms.append(score_entropy(log_score, z_c, x_c, s_c).sum(dim=-1))  # (n_c,)
    total = weight.to(terms[0].dtype) * torch.cat(terms)  # (B n,)
    return -total.reshape(batch, num_draws).mean(dim=1)  # (B,)


# ----------------------------------------------------------------------------------------------------------
# SEPO scores and the masked-denoiser view
# ----------------------------------------------------------------------------------------------------------


def log_scores(
    net,
    x: Tensor,
    positions: Tensor,
    sigma: str | float | Tensor = "auto",
    noise=None,
    batch_size: int | None = None,
) -> Tensor:
    """SEPO log-ratios of Hamming-1 neighbours from a SEDD net: (B, L) long, (B, K) long -> (B, K, m).

        log s(x)_y = log s_theta(x^(l), sigma)_{l, v} - log s_theta(x^(l), sigma)_{l, x_l},  y = x with x_l := v,

    x^(l) = x with position l MASKED. For exact scores both entries carry the same factor 1 / expm1(sigma), so this
    is log p(v | x_{-l}) - log p(x_l | x_{-l}) = log pi(y) - log pi(x) exactly, at any sigma; it equals
    `sepo.log_scores(MaskedView(net, sigma), x, positions, "conditional")` for any net. Entries at v = x_l are 0.
    sigma: "auto" (`sigma_from_mask`: one mask in L, sigma = -log(1 - 1/L)), a float, or (B,) per sequence.
    One forward per (b, k), in chunks of batch_size rows (only (batch_size, L, V) scores alive at once).
    """
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, L), got {tuple(x.shape)}")
    if positions.dim() != 2 or positions.shape[0] != x.shape[0]:
        raise ValueError(f"positions must have shape ({x.shape[0]}, K), got {tuple(positions.shape)}")
    if positions.numel() and ((positions < 0) | (positions >= x.shape[1])).any():
        raise ValueError(f"positions must lie in 0..{x.shape[1] - 1}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch, length = x.shape
    k = positions.shape[1]
    mask_id = mask_id_of(net)
    if x.numel() and ((x < 0) | (x >= mask_id)).any():
        raise ValueError(f"x must hold clean token ids in 0..{mask_id - 1} (no MASK)")
    z = x.unsqueeze(1).expand(batch, k, length).clone()  # (B, K, L)
    z.scatter_(-1, positions.unsqueeze(-1), mask_id)  # (B, K, L) x^(l)
    z = z.reshape(batch * k, length)  # (B K, L)
    sites = positions.reshape(-1)  # (B K,)
    if isinstance(sigma, Tensor) and sigma.numel() == batch and batch > 1:
        sigma = sigma.reshape(-1).repeat_interleave(k)  # (B K,)
    sig = _resolve_sigma(sigma, z, mask_id, noise, _net_dtype(net))  # (B K,)
    chunk = z.shape[0] if batch_size is None else batch_size
    rows = []
    for z_c, l_c, s_c in zip(z.split(chunk), sites.split(chunk), sig.split(chunk)):
        out = _call(net, z_c, s_c)  # (n, L, V)
        rows.append(out.gather(1, l_c.view(-1, 1, 1).expand(-1, 1, out.shape[-1])).squeeze(1)[:, :mask_id])
    site = _float(torch.cat(rows)).reshape(batch, k, mask_id)  # (B, K, m)
    current = x.gather(1, positions).unsqueeze(-1)  # (B, K, 1)
    return site - site.gather(-1, current)  # (B, K, m)


class MaskedView(nn.Module):
    """A SEDD score net seen as an MDLM "subs" denoiser: forward(z) -> logits (B, L, m) over the m clean tokens.

        logits(z)_{l, v} = log s_theta(z, sigma)_{l, v},  v < m   (MASK entry dropped; num_tokens = mask_id = m)

    Why softmax of these is the conditional: at a masked l the exact absorbing score is s_{l, v} =
    p_0(x_l = v | unmasked tokens) / expm1(sigma) (module docstring); the factor is the same for every v, so
    softmax_v logits = p_0(v | rest) whatever sigma, and the SEDD net's output shift -log expm1(sigma) - log(V - 1)
    cancels too. Entries at unmasked positions are whatever the net returns (the masked family never reads them).
    With it every masked-family / SEPO function (`diffusion.sample`, `sepo.log_scores`, `log_pi_hat`,
    `kl_to_reference`) runs on a SEDD net unchanged.

    sigma: "auto" (per row, `sigma_from_mask`: the noise level at which z's masked fraction is typical, so the
    net is queried in distribution), a float, or (B,). noise: its eps bounds "auto" at sigma(1).
    """

    def __init__(self, net: nn.Module, sigma: str | float | Tensor = "auto", noise=None):
        super().__init__()
        self.net = net
        self.mask_id = mask_id_of(net)
        self.num_tokens = self.mask_id
        self.noise = noise if noise is not None else LogLinearNoise()
        if isinstance(sigma, str) and sigma != "auto":
            raise ValueError(f"sigma must be 'auto', a float or a (B,) tensor, got {sigma!r}")
        self.sigma = sigma
        length = getattr(net, "length", None)
        if length is not None:
            self.length = length

    def forward(self, z: Tensor) -> Tensor:
        """z (B, L) long in 0..m -> logits (B, L, m)."""
        if z.dim() != 2:
            raise ValueError(f"z must have shape (B, L), got {tuple(z.shape)}")
        sigma = _resolve_sigma(self.sigma, z, self.mask_id, self.noise, _net_dtype(self.net))  # (B,)
        return _call(self.net, z, sigma)[..., : self.mask_id]  # (B, L, m)
