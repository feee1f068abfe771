"""Gymnasium environments for sepo_ray (vectorised; one batched reward call per step).

Installed as ``sepo_ray.envs`` (never as a top-level ``envs`` package that could collide with another one).
"""

from .sequence_bandit import SequenceBanditEnv

__all__ = ["SequenceBanditEnv"]
