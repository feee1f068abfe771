"""Exact enumeration toy: a tiny denoiser on {0..m-1}^L small enough to compute pi_theta exactly.

Every state in {0..m}^L (MASK = m) is enumerated; each sampler step's (S, S) transition matrix is built from
the model's logits with the very `step` / `remask_step` probabilities the sampler uses, and the law of the
final sequence is propagated exactly and differentiably:

    mu_T = e_{all MASK},   mu_{k-1} = mu_k P_k (P_k (z, z') = P_theta(z' | z), then c corrector matrices),
    pi_theta = mu_0 restricted to the m^L clean states.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from ..diffusion.schedule import LogLinearSchedule
from ..diffusion.transitions import remask_step, step


class ToyDenoiser(nn.Module):
    """Embedding of each token (incl. MASK) + MLP over the flattened sequence -> logits (B, L, m)."""

    def __init__(
        self, num_tokens: int = 3, length: int = 3, hidden: int = 32, embed: int = 8, dtype=torch.float64
    ):
        super().__init__()
        self.num_tokens = num_tokens
        self.mask_id = num_tokens
        self.length = length
        self.embed = nn.Embedding(num_tokens + 1, embed, dtype=dtype)
        self.net = nn.Sequential(
            nn.Linear(length * embed, hidden, dtype=dtype),
            nn.Tanh(),
            nn.Linear(hidden, length * num_tokens, dtype=dtype),
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.embed(z).flatten(1)  # (B, L * e)
        return self.net(h).view(z.shape[0], self.length, self.num_tokens)  # (B, L, m)


def encode(x: Tensor, num_tokens: int) -> Tensor:
    """Index of clean sequences in the enumeration order of `clean_states`: (..., L) -> (...,) long."""
    length = x.shape[-1]
    powers = num_tokens ** torch.arange(length - 1, -1, -1, device=x.device)  # (L,)
    return (x * powers).sum(-1)  # (...,)


def clean_states(num_tokens: int, length: int) -> Tensor:
    """All m^L clean sequences in lexicographic order: (m^L, L) long."""
    return torch.tensor(list(itertools.product(range(num_tokens), repeat=length)), dtype=torch.long)


class ExactToy:
    """Exact law pi_theta of the T-step sampler (+ c correctors per step, increment dt) of a toy denoiser.

    states: (S, L) all (m+1)^L states; clean: (m^L, L) clean states, `clean_index` their rows in `states`.
    """

    def __init__(
        self,
        model: nn.Module,
        steps: int,
        schedule: LogLinearSchedule | None = None,
        corrector_steps: int = 0,
        corrector_dt: float | None = None,
    ):
        self.model = model
        self.m = model.num_tokens
        self.mask_id = self.m
        self.length = model.length
        self.steps = steps
        self.schedule = schedule if schedule is not None else LogLinearSchedule()
        self.corrector_steps = corrector_steps
        self.dt = 1.0 / steps if corrector_dt is None else corrector_dt
        self.states = torch.tensor(list(itertools.product(range(self.m + 1), repeat=self.length)))  # (S, L)
        self.clean = clean_states(self.m, self.length)  # (C, L)
        self.num_states = self.states.shape[0]
        self.clean_index = encode(self.clean, self.m + 1)  # (C,)
        self.start_index = int(encode(torch.full((self.length,), self.m), self.m + 1))
        idx = torch.arange(self.num_states)
        src, dst = idx.repeat_interleave(self.num_states), idx.repeat(self.num_states)  # (S^2,)
        z, z_next = self.states[src], self.states[dst]  # (S^2, L)
        masked = z == self.mask_id
        # only the transitions a step can make: clean tokens carry over (reverse) / clean -> same or MASK (remask)
        reverse_ok = (masked | (z_next == z)).all(-1)  # (S^2,)
        remask_ok = (
            (~masked & ((z_next == z) | (z_next == self.mask_id))) | (masked & (z_next == self.mask_id))
        ).all(-1)
        self._reverse_pairs = (src[reverse_ok], dst[reverse_ok])
        self._remask_pairs = (src[remask_ok], dst[remask_ok])

    def state_index(self, z: Tensor) -> Tensor:
        """Row of z in `states`: (..., L) -> (...,)."""
        return encode(z, self.m + 1)

    def logits(self, model: nn.Module | None = None) -> Tensor:
        """model(z) for every state: (S, L, m)."""
        return (model or self.model)(self.states)

    def _reverse_probs(self, t: float, s: float, logits: Tensor) -> Tensor:
        """P(z' | z) over the possible pairs `_reverse_pairs`, from `step`: (P,)."""
        src, dst = self._reverse_pairs
        z, z_next = self.states[src], self.states[dst]  # (P, L)
        return step(None, z, t, s, self.schedule, z_next=z_next, logits=logits[src]).log_prob.exp()  # (P,)

    def _remask_probs(self, s: float, u: float, dtype=torch.float64) -> Tensor:
        src, dst = self._remask_pairs
        z, z_next = self.states[src], self.states[dst]  # (P, L)
        return remask_step(z, s, u, self.schedule, self.mask_id, z_next=z_next, dtype=dtype).log_prob.exp()

    def _dense(self, pairs: tuple[Tensor, Tensor], probs: Tensor) -> Tensor:
        flat = probs.new_zeros(self.num_states * self.num_states)  # (S^2,)
        flat = flat.index_put((pairs[0] * self.num_states + pairs[1],), probs)
        return flat.view(self.num_states, self.num_states)  # (S, S)

    def reverse_matrix(self, t: float, s: float, logits: Tensor) -> Tensor:
        """P(z, z') = exp `step(...).log_prob` over all pairs (0 for impossible ones): (S, S), rows sum to 1."""
        return self._dense(self._reverse_pairs, self._reverse_probs(t, s, logits))

    def remask_matrix(self, s: float, u: float, dtype=torch.float64) -> Tensor:
        """Forward re-masking s -> u over all pairs: (S, S)."""
        return self._dense(self._remask_pairs, self._remask_probs(s, u, dtype))

    @staticmethod
    def _propagate(mu: Tensor, pairs: tuple[Tensor, Tensor], probs: Tensor) -> Tensor:
        """mu' = mu P with P given on its support: sum_z mu(z) P(z' | z). (S,) -> (S,)"""
        return torch.zeros_like(mu).index_add(0, pairs[1], mu[pairs[0]] * probs)  # (S,)

    def marginals(self, model: nn.Module | None = None) -> list[Tensor]:
        """mu_{t_k} (S,) just before step k, for k = T..1, then the final law: T + 1 tensors."""
        logits = self.logits(model)  # (S, L, m)
        mu = torch.zeros(self.num_states, dtype=logits.dtype)
        mu[self.start_index] = 1.0
        out = [mu]
        for k in range(self.steps, 0, -1):
            t, s = k / self.steps, (k - 1) / self.steps
            mu = self._propagate(mu, self._reverse_pairs, self._reverse_probs(t, s, logits))  # (S,)
            for _ in range(self.corrector_steps):
                u = min(s + self.dt, 1.0)
                mu = self._propagate(mu, self._remask_pairs, self._remask_probs(s, u, logits.dtype))  # (S,)
                mu = self._propagate(mu, self._reverse_pairs, self._reverse_probs(u, s, logits))  # (S,)
            out.append(mu)
        return out

    def pi(self, model: nn.Module | None = None) -> Tensor:
        """Exact pi_theta over the clean states (C,), differentiable w.r.t. the model parameters."""
        return self.marginals(model)[-1][self.clean_index]  # (C,)

    def log_pi(self, model: nn.Module | None = None) -> Tensor:
        return torch.log(self.pi(model))  # (C,)

    def log_ratio(self, log_pi: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Exact log pi(y) - log pi(x) for clean x (..., L), y (..., L) from a precomputed log_pi (C,)."""
        return log_pi[encode(y, self.m)] - log_pi[encode(x, self.m)]


def toy_reward(num_tokens: int, length: int, seed: int = 0, dtype=torch.float64) -> Tensor:
    """A fixed reward table over the clean states (C,): number of token 0 plus seeded N(0, 1) noise."""
    gen = torch.Generator().manual_seed(seed)
    clean = clean_states(num_tokens, length)
    noise = torch.randn(clean.shape[0], generator=gen, dtype=dtype)
    return (clean == 0).sum(-1).to(dtype) + noise  # (C,)


def exact_reward_gradient(toy: ExactToy, rewards: Tensor) -> tuple[Tensor, list[Tensor]]:
    """E_pi[R] = sum_x pi(x) R(x) and its exact gradient w.r.t. the toy model's parameters (autograd)."""
    params = [p for p in toy.model.parameters() if p.requires_grad]
    value = (toy.pi() * rewards).sum()
    return value.detach(), list(torch.autograd.grad(value, params))


def pretrain_toy(
    model: ToyDenoiser, target: Tensor, iters: int = 300, lr: float = 0.03, seed: int = 0, batch: int = 256
) -> ToyDenoiser:
    """Fit the toy denoiser to a target law over clean states (C,) with the MDLM loss (App.: pretraining).

    A model whose conditionals approximately agree with a joint law makes the score estimators meaningful.
    """
    from ..diffusion.elbo import mdlm_loss
    from ..diffusion.process import MaskingProcess

    gen = torch.Generator().manual_seed(seed)
    clean = clean_states(model.num_tokens, model.length)
    process = MaskingProcess(model.num_tokens)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(iters):
        idx = torch.multinomial(target, batch, replacement=True, generator=gen)  # (batch,)
        loss = mdlm_loss(model, clean[idx], process, generator=gen, antithetic=True).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model
