"""Advantages: GRPO group standardisation (paper Sec. 3.2, App. B.2) and PPO reward-minus-value (App. B.1)."""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-8) -> Tensor:
    """GRPO advantages: A(x_i) = (R(x_i) - mean_g R) / (std_g R + eps) within consecutive groups of G.

    std is the population std (unbiased=False), so a group of identical rewards gets A = 0 (not NaN).
    rewards (N,) float, N % group_size == 0 -> (N,) float.  # App. B.2
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (N,), got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"group_size must be >= 1 and divide the number of rewards {rewards.shape[0]}, got {group_size}"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    grouped = rewards.reshape(-1, group_size)  # (N / G, G)
    mean = grouped.mean(dim=1, keepdim=True)  # (N / G, 1)
    std = grouped.std(dim=1, unbiased=False, keepdim=True)  # (N / G, 1)
    return ((grouped - mean) / (std + eps)).reshape(-1)  # (N,)


def ppo_advantages(rewards: Tensor, values: Tensor) -> Tensor:
    """PPO advantages for a one-step (bandit) episode: A(x) = R(x) - V(x). (N,), (N,) -> (N,)  # App. B.1"""
    if rewards.shape != values.shape or rewards.dim() != 1:
        raise ValueError(
            f"values must have the shape of rewards (N,), got {tuple(values.shape)} vs {tuple(rewards.shape)}"
        )
    return rewards - values  # (N,)


def leave_one_out_advantages(rewards: Tensor, group_size: int | None = None) -> Tensor:
    """A(x_i) = R(x_i) - mean_{j != i} R(x_j) within groups of G (whole batch if None); unbiased baseline.

    (N,) -> (N,); groups of size 1 get A = 0.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (N,), got {tuple(rewards.shape)}")
    group_size = rewards.shape[0] if group_size is None else group_size
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"group_size must be >= 1 and divide the number of rewards {rewards.shape[0]}, got {group_size}"
        )
    if group_size == 1:
        return torch.zeros_like(rewards)
    grouped = rewards.reshape(-1, group_size)  # (N / G, G)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (N / G, G)
    return (grouped - others).reshape(-1)  # (N,)
