"""Estimates pi_hat_theta(y) of the sampler's probability of a Hamming-1 neighbour y (paper Sec. 3.1).

Self-normalised importance sampling (SNIS). The paper writes pi(y) = sum_z q(y | z) pi(z) and draws M samples
z_i ~ q(. | y) with unnormalised target pi(z) / pi(y) = 1 / s(z)_y. Two choices the paper leaves open:

(i) The one-step reverse conditional at a clean y. In a masked sampler a clean y is absorbing, so we use the
    single-site re-mask-and-denoise kernel: pick l' uniformly in 1..L, mask it, redraw
    z_{l'} ~ p_theta(. | y^(l')) (y^(l') = y with l' masked). z is y itself or a Hamming-1 neighbour of y, so
    1 / s(z)_y is available. The sample is the pair (l', z) (its marginal over l' would need all L masked
    forwards of y to evaluate q(y | y)); on pairs

        q((l', z) | y) = p(z_{l'} | y^(l')) / L,        q(y | (l', z)) = p(y_{l'} | z^(l')) = p(y_{l'} | y^(l')),
        pi_aug(l', z) = pi(z) / L,                        sum_{(l', z)} q(y | (l', z)) pi_aug(l', z) = pi(y)

    where the last identity is exact when the model's conditionals are those of pi (random-scan Gibbs kernel,
    pi-reversible), which is the paper's "optimal proposal" remark.

(ii) What SNIS converges to. With log-weights log w_i = log[pi(z_i)/pi(y)] - log p(z_{i,l'} | y^(l'))
    (the 1/L cancels),

        pi_hat(y) = sum_i w_i q(y | z_i) / sum_i w_i.

    Self-normalisation divides out pi(y) itself, so pi_hat(y) -> pi(y) / [pi(y) + (1/L) pi(N(y))] as M -> inf,
    a local relative mass (y against the average over sites of its "line" {y with l' set to anything}), not
    pi(y): it is O(1) while pi(y) is tiny for long sequences. With exact ratios this limit equals the harmonic
    mean over l of pi(y_l | y_{-l}).

    With the "conditional" score, 1/s(z)_y = p(z_{l'} | y^(l')) / p(y_{l'} | y^(l')) comes from the same
    masked forward and w_i q(y | z_i) = 1 for every sample (checked numerically in tests/test_sepo.py), so

        pi_hat(y) = 1 / mean_i [1 / p_theta(y_{l'_i} | y^(l'_i))],

    the harmonic mean of the model's conditionals at M random sites, independent of the drawn tokens.
    With the "clean" score, 1/s(z)_y = 1 / softmax(f_theta(z))_{l', y_{l'}} needs one more (clean) forward per
    sample and the numerator no longer cancels.

Single-sample estimate ("none", the naive estimate the paper criticises in Sec. 3.1): pi_hat(y) = q(y | x)
from y's single parent x in the batch, q(y | x) = exp(site log-prob at (l, v)) of the score estimator's own
forward (clean: softmax f(x)_{l,v}; conditional: p(v | x^(l))): no extra forward.

Avoided defects of the published code: no clamp of log-probabilities (a log-probability clamped with
min=1e-8 makes pi_hat(z) constant) and the sample index i is never paired with the sequence position (no
`diagonal`): samples and positions are separate tensor dimensions.
All estimators return log pi_hat of shape (B, K, m) (0 at v = x_l, excluded by `neighbour_mask`), no grad.

Token proposals (`neighbours.propose_tokens`, for large vocabularies). Every function here takes an optional
`others` (B, K, J) long: the neighbour tokens v != x_l to estimate pi_hat(y) for. None means all m - 1
(`other_tokens`, today's behaviour, the same random numbers and outputs). SNIS then costs B K J M masked
forwards instead of B K (m - 1) M, sites and terms are (B, K, J, M), and the returned (B, K, m) holds 0 at
every token that was not proposed -- those entries are outside `proposal_mask` and drop out of the loss. Each
proposed neighbour gets its own sites and noise, drawn as they would be without proposals, so pi_hat(y) at a
proposed y has the law it has in the all-tokens estimator and the (m - 1) / J reweighting stays unbiased.
The learner must use the rollout's `others` (like its sites): the mask and the old-policy terms refer to them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .neighbours import _check_positions, other_tokens
from .scores import _check_estimator, _mask_id, _site_forward, site_log_probs


class SNISTerms(NamedTuple):
    """Per-sample SNIS terms for every neighbour (b, k, j) of x, j indexing the J tokens `others`.

    J = m - 1 (all other tokens) unless proposals were passed.
    """

    log_q_y_given_z: Tensor  # (B, K, J, M)  log p(y_{l'} | y^(l'))
    log_ratio_z_over_y: Tensor  # (B, K, J, M)  log pi(z)/pi(y) = -log s(z)_y
    log_q_z_given_y: Tensor  # (B, K, J, M)  log p(z_{l'} | y^(l'))
    others: Tensor  # (B, K, J) long, the neighbour tokens v != x_l
    sites: Tensor  # (B, K, J, M) long, l'
    tokens: Tensor  # (B, K, J, M) long, z_{l'}


def snis_log_pi_hat(log_q_y_given_z: Tensor, log_ratio_z_over_y: Tensor, log_q_z_given_y: Tensor) -> Tensor:
    """SNIS formula over a trailing sample dimension M (Sec. 3.1), all in log space:

        log w_i = log_ratio_z_over_y_i - log_q_z_given_y_i          (log_ratio = log pi(z_i)/pi(y) = -log s(z_i)_y)
        log pi_hat(y) = logsumexp_i(log w_i + log_q_y_given_z_i) - logsumexp_i(log w_i)

    Inputs (..., M) float, same shape -> (...,).
    """
    if not (log_q_y_given_z.shape == log_ratio_z_over_y.shape == log_q_z_given_y.shape):
        raise ValueError(
            "log_q_y_given_z, log_ratio_z_over_y and log_q_z_given_y must share one shape, got "
            f"{tuple(log_q_y_given_z.shape)}, {tuple(log_ratio_z_over_y.shape)}, {tuple(log_q_z_given_y.shape)}"
        )
    if log_q_y_given_z.dim() == 0 or log_q_y_given_z.shape[-1] < 1:
        raise ValueError("log_q_y_given_z must have a trailing sample dimension M >= 1")
    log_w = log_ratio_z_over_y - log_q_z_given_y  # (..., M)
    return torch.logsumexp(log_w + log_q_y_given_z, dim=-1) - torch.logsumexp(log_w, dim=-1)  # (...,)


def _scatter_neighbours(values: Tensor, others: Tensor, num_tokens: int) -> Tensor:
    """Place (B, K, J) values at tokens `others` of a (B, K, m) zero tensor (0 at x_l and unproposed v)."""
    out = values.new_zeros(values.shape[:-1] + (num_tokens,))  # (B, K, m)
    return out.scatter(-1, others, values)  # (B, K, m)


def _neighbour_tokens(x: Tensor, positions: Tensor, num_tokens: int, others: Tensor | None) -> Tensor:
    """others (B, K, J) checked (tokens in 0..m-1, none equal to x_l), or all m - 1 `other_tokens` if None."""
    if others is None:
        return other_tokens(x, positions, num_tokens)  # (B, K, m - 1)
    batch, k = positions.shape
    if others.dim() != 3 or tuple(others.shape[:2]) != (batch, k):
        raise ValueError(f"others must have shape ({batch}, {k}, J), got {tuple(others.shape)}")
    others = others.to(device=x.device, dtype=torch.long)  # (B, K, J)
    if others.numel() and (others.min() < 0 or others.max() >= num_tokens):
        raise ValueError(f"others must lie in 0..{num_tokens - 1}")
    if (others == x.gather(1, positions).unsqueeze(-1)).any():
        raise ValueError("others must exclude the current token x_l (a neighbour differs from x)")
    return others  # (B, K, J)


@torch.no_grad()
def snis_terms(
    model,
    x: Tensor,
    positions: Tensor,
    num_samples: int,
    estimator: str = "conditional",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    sites: Tensor | None = None,
    others: Tensor | None = None,
) -> SNISTerms:
    """Draw the SNIS samples for every neighbour y of x at the selected positions and return their terms.

    For each (b, k, j): y = x with positions[b, k] set to others[b, k, j] (tokens != x_l), M sites
    l'_i ~ U{0..L-1}, z_i = y with l'_i redrawn from p_theta(. | y^(l'_i)).
    Returns `SNISTerms` (log_q_y_given_z, log_ratio_z_over_y, log_q_z_given_y, sites, tokens: (B, K, J, M);
    others: (B, K, J)).
    Cost: B K J M masked forwards (+ as many clean forwards for estimator "clean"), in one batched call
    each (chunked by batch_size).
    sites: optional (B, K, J, M) long re-mask sites to use instead of fresh draws (common random numbers:
    the learner re-estimates pi_hat_theta(y) at the sites the rollout used for pi_hat_theta_old(y), so the
    ratio pi_hat_theta / pi_hat_theta_old is exactly 1 at theta = theta_old).
    others: optional (B, K, J) long proposed tokens (`propose_tokens`); None = all m - 1 (`other_tokens`).
    """
    _check_estimator(estimator)
    _check_positions(x, positions)
    if num_samples < 1:
        raise ValueError(f"num_samples (M) must be >= 1, got {num_samples}")
    batch, length = x.shape
    k = positions.shape[1]
    mask_id = _mask_id(model)
    m = mask_id
    others = _neighbour_tokens(x, positions, m, others)  # (B, K, J), J = m - 1 without proposals
    j = others.shape[-1]
    y = x.view(batch, 1, 1, length).expand(batch, k, j, length).clone()  # (B, K, J, L)
    y.scatter_(
        -1, positions.view(batch, k, 1, 1).expand(batch, k, j, 1), others.unsqueeze(-1)
    )  # (B, K, J, L)
    shape = (batch, k, j, num_samples)
    if sites is None:
        sites = torch.randint(0, length, shape, generator=generator, device=x.device)  # (B, K, J, M)
    elif tuple(sites.shape) != shape:
        raise ValueError(f"sites must have shape {shape} (B, K, J, M), got {tuple(sites.shape)}")
    else:
        sites = sites.to(device=x.device, dtype=torch.long)  # (B, K, J, M)
    y_rep = y.unsqueeze(3).expand(*shape, length)  # (B, K, J, M, L)
    y_masked = y_rep.scatter(-1, sites.unsqueeze(-1), mask_id)  # (B, K, J, M, L)  y^(l')
    n = batch * k * j * num_samples
    site_logp = _site_forward(model, y_masked.reshape(n, length), sites.reshape(n), batch_size)  # (n, m)
    site_logp = site_logp.reshape(*shape, m)  # (B, K, J, M, m)  log p(. | y^(l'))
    u = torch.rand(site_logp.shape, generator=generator, device=x.device, dtype=site_logp.dtype)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))  # (B, K, J, M, m)
    new_token = (site_logp + gumbel).argmax(dim=-1)  # (B, K, J, M)  z_{l'} ~ p(. | y^(l'))
    y_site = y_rep.gather(-1, sites.unsqueeze(-1)).squeeze(-1)  # (B, K, J, M)  y_{l'}
    log_q_z_given_y = site_logp.gather(-1, new_token.unsqueeze(-1)).squeeze(-1)  # (B, K, J, M)  (1/L cancels)
    log_q_y_given_z = site_logp.gather(-1, y_site.unsqueeze(-1)).squeeze(-1)  # (B, K, J, M)  z^(l') = y^(l')
    if estimator == "conditional":
        log_ratio = log_q_z_given_y - log_q_y_given_z  # (B, K, J, M)  -log s(z)_y, conditional estimator
    else:
        z = y_rep.scatter(-1, sites.unsqueeze(-1), new_token.unsqueeze(-1))  # (B, K, J, M, L)
        clean_site = _site_forward(model, z.reshape(n, length), sites.reshape(n), batch_size)  # (n, m)
        clean_site = clean_site.reshape(*shape, m)  # (B, K, J, M, m)  log softmax f(z) at l'
        log_s = clean_site.gather(-1, y_site.unsqueeze(-1)).squeeze(-1)  # (B, K, J, M)  log s(z)_y, clean
        log_ratio = torch.where(new_token == y_site, torch.zeros_like(log_s), -log_s)  # (B, K, J, M)
    return SNISTerms(log_q_y_given_z, log_ratio, log_q_z_given_y, others, sites, new_token)


@torch.no_grad()
def snis_log_pi(
    model,
    x: Tensor,
    positions: Tensor,
    num_samples: int,
    estimator: str = "conditional",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    sites: Tensor | None = None,
    others: Tensor | None = None,
) -> Tensor:
    """SNIS log pi_hat_theta(y) for the neighbours y of x at the positions: (B, L), (B, K) -> (B, K, m).

    See the module docstring for the kernel, the weights and the limit pi(y) / [pi(y) + pi(N(y)) / L].
    others: optional (B, K, J) proposed tokens (None = all m - 1); sites then (B, K, J, M).
    Entries at v = x_l and at unproposed tokens are 0 (outside `neighbour_mask` / `proposal_mask`). No grad.
    """
    terms = snis_terms(model, x, positions, num_samples, estimator, generator, batch_size, sites, others)
    log_pi = snis_log_pi_hat(
        terms.log_q_y_given_z, terms.log_ratio_z_over_y, terms.log_q_z_given_y
    )  # (B, K, J)
    return _scatter_neighbours(log_pi, terms.others, _mask_id(model))  # (B, K, m)


@torch.no_grad()
def single_sample_log_pi(
    model,
    x: Tensor,
    positions: Tensor,
    estimator: str = "conditional",
    batch_size: int | None = None,
    site_logp: Tensor | None = None,
    others: Tensor | None = None,
) -> Tensor:
    """No SNIS: log pi_hat(y) = log q_theta(y | x) from y's single parent x (Sec. 3.1 naive estimate).

    log q(y | x) = site_log_probs(x)[b, k, v] of the score estimator's forward (clean: log softmax f(x)_{l,v};
    conditional: log p(v | x^(l))); pass `site_logp` (B, K, m) to reuse it. (B, L), (B, K) -> (B, K, m),
    0 at v = x_l. others: optional (B, K, J) proposed tokens, then also 0 at unproposed tokens (the forward
    yields all m entries anyway: no saving, only the same zeros as SNIS). No grad.
    """
    if site_logp is None:
        site_logp = site_log_probs(model, x, positions, estimator, batch_size)  # (B, K, m)
    if others is not None:
        others = _neighbour_tokens(x, positions, site_logp.shape[-1], others)  # (B, K, J)
        values = site_logp.detach().gather(-1, others)  # (B, K, J)
        return _scatter_neighbours(values, others, site_logp.shape[-1])  # (B, K, m)
    current = x.gather(1, positions).unsqueeze(-1)  # (B, K, 1)
    own = torch.arange(site_logp.shape[-1], device=x.device) == current  # (B, K, m)
    return site_logp.detach().masked_fill(own, 0.0)  # (B, K, m)


def log_pi_hat(
    model,
    x: Tensor,
    positions: Tensor,
    num_samples: int,
    estimator: str = "conditional",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    sites: Tensor | None = None,
    others: Tensor | None = None,
) -> Tensor:
    """Dispatch: num_samples = 0 -> `single_sample_log_pi`, M >= 1 -> `snis_log_pi`. -> (B, K, m), no grad.

    sites: optional (B, K, J, M) SNIS re-mask sites (see `snis_terms`), e.g. from `draw_snis_sites`.
    others: optional (B, K, J) proposed tokens from `propose_tokens` (None = all J = m - 1 other tokens);
    entries at unproposed tokens are 0.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples (M) must be >= 0 (0 = no SNIS), got {num_samples}")
    if num_samples == 0:
        return single_sample_log_pi(model, x, positions, estimator, batch_size, others=others)
    return snis_log_pi(model, x, positions, num_samples, estimator, generator, batch_size, sites, others)


def draw_snis_sites(
    positions: Tensor,
    num_tokens: int,
    num_samples: int,
    length: int,
    generator: torch.Generator | None = None,
    others: Tensor | None = None,
    free: Tensor | None = None,
) -> Tensor:
    """Uniform SNIS re-mask sites l'_i for every neighbour: positions (B, K) -> (B, K, J, M) long.

    J = m - 1 (all other tokens), or others.shape[-1] for proposed tokens `others` (B, K, J).
    free: optional (B, L) bool; sites are then uniform over each row's free positions (a prompt is context,
    never re-masked), and the kernel's 1/L becomes 1/C_b, which cancels in the SNIS weights as before.
    """
    batch, k = positions.shape
    if others is None:
        j = num_tokens - 1
    elif others.dim() != 3 or tuple(others.shape[:2]) != (batch, k):
        raise ValueError(f"others must have shape ({batch}, {k}, J), got {tuple(others.shape)}")
    else:
        j = others.shape[-1]
    shape = (batch, k, j, max(num_samples, 0))
    if free is None:
        return torch.randint(0, length, shape, generator=generator, device=positions.device)  # (B, K, J, M)
    count = free.sum(dim=1).view(batch, 1, 1, 1)  # (B, 1, 1, 1)
    u = torch.rand(shape, generator=generator, device=positions.device, dtype=torch.float64)  # (B, K, J, M)
    rank = (u * count).floor().long().clamp(max=length - 1)  # (B, K, J, M) index among the free positions
    ordered = torch.argsort((~free).to(torch.int8), dim=1, stable=True)  # (B, L) free positions first
    return ordered.gather(1, rank.view(batch, -1)).view(shape)  # (B, K, J, M)
