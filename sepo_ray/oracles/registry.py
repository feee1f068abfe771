"""Reward names: the entry-point group ``sepo_ray.oracles`` (``name = "module:Class"``), read on demand.

A package adds its oracles in its ``pyproject.toml``; sepo_ray declares the DNA and text tasks' there. Every
process (a rollout worker, an oracle actor) reads the same installed metadata, so a name resolves the same way
everywhere. :func:`register_oracle` adds a name in the running process only (tests, notebooks).
"""

from __future__ import annotations

from collections.abc import Callable

from sepo_ray.runtime import entry_point_specs, import_object

ENTRY_POINT_GROUP = "sepo_ray.oracles"
_registered: dict[str, str] = {}


def register_oracle(name: str, spec: str) -> None:
    """Make the oracle class or function ``spec`` (``"module:attr"``) available as ``name`` in this process."""
    if not name or ":" in name:
        raise ValueError(f"oracle name must be non-empty and without ':', got {name!r}")
    if ":" not in spec:
        raise ValueError(f"oracle {name!r}: expected a 'module:Class' spec, got {spec!r}")
    _registered[name] = spec


def oracle_specs() -> dict[str, str]:
    """Every reward name -> ``module:attr`` (installed entry points, then this process's registrations)."""
    return {**entry_point_specs(ENTRY_POINT_GROUP), **_registered}


def oracle_names() -> list[str]:
    """Every reward name, sorted."""
    return sorted(oracle_specs())


def get_oracle(name: str, **kwargs) -> Callable:
    """Build a registered oracle by name (kwargs go to its constructor, e.g. ``device="cuda"``).

    Unknown names raise ValueError listing the valid ones.
    """
    specs = oracle_specs()
    if name not in specs:
        raise ValueError(f"oracle name must be one of {sorted(specs)}, got {name!r}")
    return import_object(specs[name], f"oracle {name!r}")(**kwargs)
