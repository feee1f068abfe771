"""Reward oracles: the names tasks register (``Task.oracles``) and the Ray actor pool that serves any reward.

``get_oracle(name)`` builds an oracle that a task registers (``Task.oracles``); the pool, reward specs
and their validation live in :mod:`sepo_ray.oracles.pool`.
"""

from __future__ import annotations

from collections.abc import Callable

from .pool import (
    RewardError,
    RewardPool,
    check_reward_spec,
    import_callable,
    resolve_reward,
    validate_rewards,
)


def oracle_names() -> list[str]:
    """Every reward name the installed tasks register."""
    from sepo_ray.tasks import oracle_specs

    return sorted(oracle_specs())


def get_oracle(name: str, **kwargs) -> Callable:
    """Build a registered oracle by name (kwargs go to its constructor, e.g. ``device="cuda"``).

    Unknown names raise ValueError listing the valid ones.
    """
    from sepo_ray.tasks import oracle_specs

    specs = oracle_specs()
    if name not in specs:
        raise ValueError(f"oracle name must be one of {sorted(specs)}, got {name!r}")
    from sepo_ray.runtime import import_object

    return import_object(specs[name], f"oracle {name!r}")(**kwargs)


__all__ = [
    "RewardError",
    "RewardPool",
    "check_reward_spec",
    "get_oracle",
    "import_callable",
    "oracle_names",
    "resolve_reward",
    "validate_rewards",
]
