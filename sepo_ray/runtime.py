"""Shared plumbing: one Ray start-up, one atomic JSON writer, one resolver of ``module:attr`` specs and of
entry-point groups (the registries of tasks, model classes and oracles)."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def init_ray(
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    address: str | None = None,
    log_to_driver: bool = False,
    announce: bool = True,
) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``, as under ``ray job submit``), or start a local Ray runtime.

    Returns True when this call started or joined Ray, False when Ray was already initialised.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        if announce:
            print(f"joined Ray cluster at {address}", flush=True)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=log_to_driver)
        start_reaper()
        if announce:
            print(
                f"started a local Ray runtime ({ray.cluster_resources().get('CPU', 0):.0f} CPUs)", flush=True
            )
    return True


_REAPER = []  # the reaper's Popen: its stdin is the pipe whose closing (this process's exit) it waits for


def start_reaper() -> None:
    """Make the local Ray runtime this process just started die with it, even after a SIGKILL
    (:mod:`sepo_ray.reaper`)."""
    import subprocess
    import sys

    import psutil
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    children = [f"{p.pid}@{p.create_time()}" for p in psutil.Process().children(recursive=True)]
    reaper = subprocess.Popen(
        [sys.executable, "-m", "sepo_ray.reaper", session, *children],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # neither Ctrl-C in the terminal nor the driver's death reach it
    )
    _REAPER.append(reaper)


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars and arrays as Python values and non-finite floats as None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return str(x)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically: a crash mid-write never leaves a truncated or half-new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(jsonable(obj), f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def entry_point_specs(group: str) -> dict[str, str]:
    """Name -> ``module:attr`` of every installed entry point of ``group`` (read on every call: cheap)."""
    from importlib import metadata

    return {ep.name: ep.value for ep in metadata.entry_points(group=group)}


def import_object(spec: str, what: str) -> Any:
    """The object a ``module:attr`` spec names (``attr`` may be dotted); ValueError naming ``what`` otherwise."""
    module_name, _, attr = str(spec).partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'module:function'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
