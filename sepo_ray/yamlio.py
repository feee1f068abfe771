"""YAML as a user writes it: ``1e-3`` is a float (YAML 1.1 wants ``1.0e-3``), ``nan``/``inf`` are numbers, and a
duplicate key is an error instead of a silent overwrite. Used by sweep files and by ``--set KEY=VALUE`` items
(:func:`parse_overrides`)."""

from __future__ import annotations

import re
from typing import Any

import yaml


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``) and refuses duplicate keys."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _construct_mapping(loader: YamlLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ValueError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_load(text: str) -> Any:
    """YAML with floats as a user writes them (``1e-3``, ``nan``, ``inf``) and no duplicate keys."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader subclass


def parse_value(text: str) -> Any:
    """A ``--set`` value as a YAML scalar: ``3e-4`` -> 0.0003, ``nan`` -> nan, ``null`` -> None, ``true`` -> True,
    ``a`` -> "a"."""
    value = yaml_load(text) if text.strip() else ""
    if isinstance(value, str):  # "nan", "inf", "-inf" as a user types them
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=3e-5", "kl_alpha=0.1"]`` -> ``{"lr": 3e-05, "kl_alpha": 0.1}``; ValueError names a bad item."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if not value.strip():
            raise ValueError(f"--set {item!r}: {key} needs a value (KEY=VALUE)")
        out[key] = parse_value(value)
    return out
