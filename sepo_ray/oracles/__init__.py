"""Reward oracles: the names installed packages declare, and the Ray actor pool that serves any reward.

Names come from the entry-point group ``sepo_ray.oracles`` (:mod:`.registry`); reward specs, their
validation and the pool live in :mod:`.pool`; local Hugging Face classifiers in :mod:`.hf`.
"""

from __future__ import annotations

from .pool import (
    RewardError,
    RewardPool,
    check_reward_spec,
    import_callable,
    resolve_reward,
    validate_rewards,
)
from .registry import ENTRY_POINT_GROUP, get_oracle, oracle_names, oracle_specs, register_oracle

__all__ = [
    "ENTRY_POINT_GROUP",
    "RewardError",
    "RewardPool",
    "check_reward_spec",
    "get_oracle",
    "import_callable",
    "oracle_names",
    "oracle_specs",
    "register_oracle",
    "resolve_reward",
    "validate_rewards",
]
