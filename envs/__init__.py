"""Gymnasium environments for sepo_ray (vectorised; one batched reward call per step)."""

from envs.sequence_bandit import SequenceBanditEnv

__all__ = ["SequenceBanditEnv"]
