"""Likelihood of a completion given its prompt under a SEDD generator: the score-entropy ELBO with the prompt
clamped (paper Sec. 4.1 "the completions' likelihood under the pretrained model").

`conditional_elbo` reuses :func:`sepo_ray.diffusion.score_entropy.elbo` on a view of the net in which some
positions are *fixed*: the prompt (the net always sees its tokens, as the sampler clamps them) and the positions
past the end of a completion (always MASK: marginalised out). At a fixed position the view returns the exact
score of a certain token, s_v = r 1[v = x_l] with r = 1 / expm1(sigma), whose denoising score entropy is 0
(``score_entropy``: r - r log r + r (log r - 1) = 0), so only the completion's positions enter the bound:

    ELBO(c | p) = - int_0^1 dsigma E_z [ sum_{l in completion, z_l = M} DSE_l(s_theta(z with p clamped), z, x) ],

a lower bound on log pi(c | p) (Lou et al. 2024, Thm 3.6, for the process whose prompt positions never move).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sepo_ray.diffusion.score_entropy import elbo, mask_id_of


class FixedPositions(nn.Module):
    """A SEDD score net with the positions ``fixed`` (B, L) bool held at ``x`` (B, L): prompt tokens, or MASK
    past a completion's end. Rows of ``x`` repeat ``repeats`` times (the ELBO's draws per sequence)."""

    def __init__(self, net: nn.Module, x: Tensor, fixed: Tensor, repeats: int):
        super().__init__()
        self.net = net
        self.mask_id = mask_id_of(net)
        self.x = x.repeat_interleave(repeats, dim=0)  # (B n, L)
        self.fixed = fixed.repeat_interleave(repeats, dim=0)  # (B n, L)

    def forward(self, z: Tensor, sigma: Tensor) -> Tensor:
        """z (B n, L) long, sigma (B n,) -> log-scores (B n, L, V), exact at the fixed positions."""
        if z.shape != self.x.shape:
            raise ValueError(f"z must have shape {tuple(self.x.shape)}, got {tuple(z.shape)}")
        log_score = self.net(torch.where(self.fixed, self.x, z), sigma)  # (B n, L, V)
        log_r = -torch.log(torch.expm1(sigma.to(log_score.dtype)))  # (B n,)
        exact = torch.full_like(log_score, float("-inf"))  # (B n, L, V)
        target = self.x.clamp(max=self.mask_id - 1).unsqueeze(-1)  # (B n, L, 1)
        exact.scatter_(-1, target, log_r.view(-1, 1, 1).expand_as(target).contiguous())
        return torch.where(self.fixed.unsqueeze(-1), exact, log_score)  # (B n, L, V)


@torch.no_grad()
def conditional_elbo(
    net: nn.Module,
    x: Tensor,
    prompt_lengths: Tensor,
    num_draws: int = 8,
    generator: torch.Generator | None = None,
    batch_size: int = 32,
) -> tuple[Tensor, Tensor]:
    """ELBO of each completion given its prompt, nats per sequence, and the completion's token count.

    x (N, L) long: the prompt's first ``prompt_lengths[i]`` tokens, then the completion, MASK after its end (those
    positions are marginalised). -> (elbo (N,) float64, tokens (N,) long). Sequences of ``batch_size`` at a time
    (each ``num_draws`` rows through the net).
    """
    if x.dim() != 2 or prompt_lengths.shape != (x.shape[0],):
        raise ValueError(
            f"x must be (N, L) and prompt_lengths (N,), got {tuple(x.shape)}, {tuple(prompt_lengths.shape)}"
        )
    mask_id = mask_id_of(net)
    device = next(net.parameters()).device
    positions = torch.arange(x.shape[1])  # (L,)
    prompt = positions[None, :] < prompt_lengths[:, None]  # (N, L)
    fixed = prompt | (x == mask_id)  # (N, L)
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb, fb = x[start : start + batch_size].to(device), fixed[start : start + batch_size].to(device)
        view = FixedPositions(net, xb, fb, num_draws)
        out.append(elbo(view, xb, num_draws=num_draws, generator=generator).double().cpu())  # (b,)
    values = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
    return values, (~fixed).sum(dim=1)
