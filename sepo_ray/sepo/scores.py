"""Log concrete scores log s_theta(x)_y ~ log pi_theta(y) - log pi_theta(x) for Hamming-1 neighbours y.

Two estimators (DESIGN "Scores"), both returning (B, K, m) indexed by (position k, token v):
- "clean": the published code's estimator, log-softmax of f_theta(x) at (l, v), one forward on the clean x
  (for an MDLM "subs" denoiser the logits at unmasked positions never enter the sampler, so this estimator
  sees parameters' effect on outputs that pi_theta does not depend on);
- "conditional": log p_theta(v | x^(l)) - log p_theta(x_l | x^(l)), x^(l) = x with l masked; exact for a
  model whose conditionals are those of pi; one forward per selected position, all in one batched call.
Entries at v = x_l are 0 and excluded by `neighbour_mask`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .neighbours import _check_positions

ESTIMATORS = ("clean", "conditional")


def _check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def _forward(model, z: Tensor, batch_size: int | None) -> Tensor:
    """model(z) in chunks of batch_size rows: (N, L) -> (N, L, m) log-probabilities."""
    if batch_size is None or z.shape[0] <= batch_size:
        logits = model(z)  # (N, L, m)
    else:
        logits = torch.cat([model(chunk) for chunk in z.split(batch_size)])  # (N, L, m)
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _site_forward(model, z: Tensor, sites: Tensor, batch_size: int | None) -> Tensor:
    """log-softmax of model(z) at one site per row, chunked: z (N, L), sites (N,) long -> (N, m).

    Equal to `_forward(model, z, batch_size)[n, sites[n]]`, but only one chunk's (batch_size, L, m) logits
    are alive at a time: for a large vocabulary m the full (N, L, m) would not fit.
    """
    if batch_size is None or z.shape[0] <= batch_size:
        chunks = [(z, sites)]
    else:
        chunks = list(zip(z.split(batch_size), sites.split(batch_size)))
    out = []
    for z_c, s_c in chunks:
        logp = _forward(model, z_c, None)  # (n, L, m)
        out.append(logp.gather(1, s_c.view(-1, 1, 1).expand(-1, 1, logp.shape[-1])).squeeze(1))  # (n, m)
    return out[0] if len(out) == 1 else torch.cat(out)  # (N, m)


def site_log_probs(
    model, x: Tensor, positions: Tensor, estimator: str = "conditional", batch_size: int | None = None
) -> Tensor:
    """log p_theta(v | .) at each selected position, from the estimator's forward: (B, L), (B, K) -> (B, K, m).

    clean: log-softmax of f(x) at l (one forward of batch B); conditional: log-softmax of f(x^(l)) at l (one
    forward of batch B * K). exp of it is also the single-parent estimate q_theta(y | x) (snis.py).
    """
    _check_estimator(estimator)
    _check_positions(x, positions)
    batch, length = x.shape
    k = positions.shape[1]
    mask_id = _mask_id(model)
    if estimator == "clean":
        logp = _forward(model, x, batch_size)  # (B, L, m)
        return logp.gather(1, positions.unsqueeze(-1).expand(batch, k, logp.shape[-1]))  # (B, K, m)
    z = x.unsqueeze(1).expand(batch, k, length).clone()  # (B, K, L)
    z.scatter_(-1, positions.unsqueeze(-1), mask_id)  # (B, K, L) x^(l)
    logp = _site_forward(model, z.reshape(batch * k, length), positions.reshape(-1), batch_size)  # (B K, m)
    return logp.reshape(batch, k, -1)  # (B, K, m)


def log_scores_from_site_log_probs(
    site_logp: Tensor, x: Tensor, positions: Tensor, estimator: str = "conditional"
) -> Tensor:
    """Turn `site_log_probs` into log scores: (B, K, m) -> (B, K, m), 0 at v = x_l.

    conditional: site_logp[b, k, v] - site_logp[b, k, x_l];  clean: site_logp[b, k, v] (published estimator).
    """
    _check_estimator(estimator)
    current = x.gather(1, positions).unsqueeze(-1)  # (B, K, 1)
    if estimator == "conditional":
        return site_logp - site_logp.gather(-1, current)  # (B, K, m)
    own = torch.arange(site_logp.shape[-1], device=x.device) == current  # (B, K, m)
    return site_logp.masked_fill(own, 0.0)  # (B, K, m)


def log_scores(
    model, x: Tensor, positions: Tensor, estimator: str = "conditional", batch_size: int | None = None
) -> Tensor:
    """log s_theta(x)_y for y = x with x[positions[b, k]] set to v: (B, L) long, (B, K) long -> (B, K, m).

    clean:       log s(x)_y = log softmax(f_theta(x))_{l, v}          (published code; one forward on x)
    conditional: log s(x)_y = log p_theta(v | x^(l)) - log p_theta(x_l | x^(l))   (B * K masked forwards)
    Entries at v = x_l are 0. Differentiable w.r.t. the model. batch_size chunks the model calls.
    """
    site_logp = site_log_probs(model, x, positions, estimator, batch_size)  # (B, K, m)
    return log_scores_from_site_log_probs(site_logp, x, positions, estimator)  # (B, K, m)


def _mask_id(model) -> int:
    mask_id = getattr(model, "mask_id", None)
    mask_id = getattr(model, "num_tokens", None) if mask_id is None else mask_id
    if mask_id is None:
        raise ValueError("model must expose num_tokens (or mask_id)")
    return int(mask_id)
