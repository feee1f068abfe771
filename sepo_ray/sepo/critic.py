"""PPO actor-critic advantages: a value network V_phi(c) on the prompt c, fitted by MSE (App. B.1, App. E.1).

Generation is a one-step contextual bandit: the state is the prompt c, the action the whole sequence x, the
return its reward R(x). So the critic is a function of the prompt only, V_phi(c) ~ E_{x ~ pi_theta(.|c)} R(x),
and the advantage is A(x) = R(x) - V_phi(c)  # App. B.1, App. E.1
A value of x itself (the paper's GPT-2 critic reads the sequence) would make the baseline depend on the action
and bias the policy gradient; the prompt is what the policy conditions on. A task without prompts has a single
state, so V_phi degenerates to one learned scalar (a learned baseline).

Ordering (standard PPO): the advantages of an iteration use V_phi BEFORE it sees that iteration's rewards; the
critic is then fitted on them, one step of the MSE  (V_phi(c) - R(x))^2  per epoch, with its own optimiser,
alongside the policy's update  # App. E.1  (the RLlib learner owns both optimisers, as RLlib's PPO does).

KL regularisation: App. E.1 subtracts beta * KL(q^theta(x) || q^pre(x)) from each sequence's reward. Here the
same alpha * KL(pi_theta || pi_pre) along the sampler path is a term of the SEPO loss (App. D.2), evaluated by
the learner for every advantage variant alike; it is not folded into R, so the critic fits the task reward
itself. (Folding it in would need the per-sequence path KL in the driver, which only the learner computes.)

Pure torch: no Ray, no logging; runs on a CPU in milliseconds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .advantages import ppo_advantages


class ValueNet(nn.Module):
    """V_phi(c): prompt tokens (N, P) int64 in 0..m (MASK = m pads) -> values (N,) float32.

    h = sum_i keep_i E[c_i] * (1 + pos_i) / max(1, sum_i keep_i)   (keep_i = c_i != MASK; E (m+1, H), pos (P, H))
    V = w_2 . tanh(W_1 h + b_1) + b
    The position gate (initialised at 0, so h starts as the plain mean of the prompt's token embeddings) lets
    the value depend on which token stands where ("the first token"), which a plain mean cannot. With P = 0
    (a task without prompts) only the scalar b remains: V_phi is a learned baseline of the single state.
    """

    def __init__(self, num_tokens: int, prompt_length: int = 0, hidden: int = 32, seed: int = 0):
        super().__init__()
        if num_tokens < 1 or prompt_length < 0 or hidden < 1:
            raise ValueError(
                f"need num_tokens >= 1, prompt_length >= 0, hidden >= 1; got {num_tokens}, {prompt_length}, {hidden}"
            )
        self.mask_id = int(num_tokens)
        self.prompt_length = int(prompt_length)
        self.bias = nn.Parameter(torch.zeros(()))  # b: the whole value when P = 0
        self.register_buffer(
            "fits", torch.zeros((), dtype=torch.long)
        )  # batches fitted so far (checkpointed)
        if self.prompt_length:
            g = torch.Generator().manual_seed(int(seed))  # seeded init, independent of the global RNG
            bound = 1.0 / math.sqrt(hidden)
            self.embed = nn.Parameter(torch.randn(num_tokens + 1, hidden, generator=g))  # (m + 1, H)
            self.pos = nn.Parameter(torch.zeros(self.prompt_length, hidden))  # (P, H)
            self.w1 = nn.Parameter((torch.rand(hidden, hidden, generator=g) * 2 - 1) * bound)  # (H, H)
            self.b1 = nn.Parameter(torch.zeros(hidden))  # (H,)
            self.w2 = nn.Parameter((torch.rand(hidden, generator=g) * 2 - 1) * bound)  # (H,)

    def forward(self, prompt: Tensor) -> Tensor:
        """prompt (N, P) int64, MASK-padded -> V_phi (N,) float32."""
        if prompt.dim() != 2 or prompt.shape[1] != self.prompt_length:
            raise ValueError(f"prompt must have shape (N, {self.prompt_length}), got {tuple(prompt.shape)}")
        n = prompt.shape[0]
        if not self.prompt_length:
            return self.bias.expand(n)  # (N,)
        keep = (prompt != self.mask_id).float()  # (N, P)
        e = self.embed[prompt] * (1.0 + self.pos)  # (N, P, H)
        h = (e * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1.0)  # (N, H)
        return torch.tanh(h @ self.w1.T + self.b1) @ self.w2 + self.bias  # (N,)


def value_loss(values: Tensor, rewards: Tensor) -> tuple[Tensor, dict[str, float]]:
    """MSE value loss mean_i (V_i - R_i)^2 and its stats. (N,), (N,) -> scalar.  # App. E.1"""
    if values.shape != rewards.shape or values.dim() != 1:
        raise ValueError(
            f"values must have the shape of rewards (N,), got {tuple(values.shape)} vs {tuple(rewards.shape)}"
        )
    loss = (values - rewards).pow(2).mean()
    return loss, {"value_loss": float(loss.detach())}


def explained_variance(values: Tensor, rewards: Tensor) -> float:
    """1 - Var(R - V) / Var(R) (1: perfect, 0: no better than the batch mean, < 0: worse); nan if Var(R) = 0.

    Exactly 0 for a V constant over the batch (a task without prompts): a baseline of one state explains none of
    the spread within a batch; its ``value_loss`` says how well it tracks the mean reward.
    """
    r, v = rewards.double(), values.double()
    var = float(r.var(unbiased=False))
    return float("nan") if var == 0.0 else 1.0 - float((r - v).var(unbiased=False)) / var


def critic_advantages(rewards: Tensor, values: Tensor, normalize: bool = True, eps: float = 1e-8) -> Tensor:
    """A = R - V, optionally divided by the batch root-mean-square of A. (N,), (N,) -> (N,) float64.

    Normalised so that the loss sees unit-scale advantages, as under GRPO: the clip range and learning rate
    then mean the same for any reward scale (DNA activity, a probability for text). Not centred: subtracting
    the batch mean would replace the critic's baseline by the batch mean. RMS rather than std, so that a batch
    whose residuals are all equal (one sequence, or a critic off by a constant) gets A = +-1, not +-1/eps;
    all-zero residuals give A = 0.
    """
    a = ppo_advantages(rewards.double(), values.double())  # (N,)  # App. B.1
    if not normalize:
        return a
    return a / (a.pow(2).mean().sqrt() + eps)  # (N,)


@torch.no_grad()
def center_value(net: ValueNet, prompts: Tensor, rewards: Tensor) -> None:
    """Before the first fit, shift b by the batch's mean residual, so that V_phi starts at the reward's level
    instead of 0 (the first advantages are then centred on the batch mean, as the running baseline of 'ppo'
    is). A no-op once ``net.fits`` > 0. prompts (N, P) int64, rewards (N,)."""
    if int(net.fits) == 0:
        net.bias += (rewards.to(torch.float32) - net(prompts)).mean()


def critic_stats(values: Tensor, rewards: Tensor) -> dict[str, float]:
    """What to log of the V_phi used for a batch's advantages (before it saw these rewards): ``value_loss``
    (MSE), ``explained_var`` and ``value_mean``. (N,), (N,) -> floats."""
    _, stats = value_loss(values.double(), rewards.double())
    return {
        **stats,
        "explained_var": explained_variance(values, rewards),
        "value_mean": float(values.double().mean()),
    }
