"""What a sweep checks before anything starts: every reward spec a trial could get, and that a trial's GPUs fit.

Both run on ``--dry-run`` and again on a real run before Tune starts. A reward that names nothing would fail
every trial at set-up; a trial asking for more GPUs than the cluster has (or, with an autoscaler, can ever
have) is never placed, and Tune waits for it forever.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from sepo_ray.settings import SETTINGS

from .space import trial_resources
from .spec import SweepError, SweepSpec

_GPU_FIELDS = "num_gpus_per_learner, num_gpus_per_env_runner or oracle_num_gpus"


def _values(spec: SweepSpec, name: str) -> Iterator[tuple[str, Any]]:
    """(where, value) of every value ``name`` takes: each searched one, else the base config's (or default)."""
    searched = [p for p in spec.search_space if p.field == name]
    if searched:
        yield from ((f"search_space.{name}", value) for value in searched[0].args)
    else:
        yield f"base_config.{name}", spec.base_config.get(name, SETTINGS[name].default)


def check_rewards(spec: SweepSpec) -> None:
    """Check every reward spec a trial could get with ``check_reward_spec`` (an import, no model built).

    ``reward`` from base_config or each searched value; unset, the reward of each task's run defaults (its
    resolved settings). Raises SweepError naming the key, e.g.
    ``base_config.reward: reward 'nosuch:f': cannot import module 'nosuch' ...``.
    """
    from sepo_ray.oracles.pool import check_reward_spec

    from .space import resolved

    for where, reward in _values(spec, "reward"):
        for task_where, task in _values(spec, "task"):
            changes = {"task": task} if reward is None else {"task": task, "reward": reward}
            try:
                value = resolved(spec, changes)["reward"]
            except ValueError as err:
                raise SweepError(f"{task_where if reward is None else where}: {err}") from None
            key = where if reward is not None else f"{where} (unset: task {task!r}'s default {value!r})"
            try:
                check_reward_spec(value)
            except ValueError as err:
                raise SweepError(f"{key}: {err}") from None


def trial_gpu_requests(spec: SweepSpec, trainable: Any, param_space: Mapping) -> list[tuple[str, float]]:
    """(where, GPUs one trial asks for) for the base config and each searched value (grid/choice values,
    range ends), as ``trial_resources`` computes it; empty when the trainable does not say."""
    fixed = dict(param_space)
    requests = []
    base = trial_resources(trainable, fixed)
    if base is None:
        return []
    requests.append(("base_config", base["GPU"]))
    for param in spec.search_space:
        for value in param.args:
            need = trial_resources(trainable, {**fixed, param.field: value})
            if need is not None:
                requests.append((f"search_space.{param.field}={value!r}", need["GPU"]))
    return requests


def cluster_gpus() -> tuple[float, str]:
    """(GPUs, a phrase saying how many and where counted) of the running Ray cluster: ``ray.cluster_resources()``,
    or the most its autoscaler can reach (node types times their ``max_workers``) when larger."""
    import ray

    now = float(ray.cluster_resources().get("GPU", 0))
    try:  # Ray Train checks its worker groups the same way (ray._private: no public API yet)
        from ray._private.state import state

        most = (state.get_max_resources_from_cluster_config() or {}).get("GPU")
    except Exception:  # noqa: BLE001 - no autoscaler config: the cluster is what it is now
        most = None
    if most and float(most) > now:
        return float(most), f"the Ray cluster has {now:g} now and its autoscaler can reach {float(most):g}"
    return now, f"the Ray cluster has {now:g} (ray.cluster_resources())"


def available_gpus(spec: SweepSpec, address: str | None = None) -> tuple[float, str]:
    """GPUs a trial can be placed on, without starting Ray: the running cluster's when Ray is up or an
    ``address`` (or ``RAY_ADDRESS``) is given (joined just to ask, then left), else ``resources.num_gpus``,
    else this machine's CUDA devices (what a local Ray would find)."""
    import ray

    from sepo_ray.runtime import init_ray

    if ray.is_initialized():
        return cluster_gpus()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            init_ray(address=address, announce=False)
        except Exception as err:  # noqa: BLE001 - one line instead of Ray's connection traceback
            raise SweepError(
                f"--address {address}: cannot join the Ray cluster to count its GPUs: {err}"
            ) from None
        try:
            return cluster_gpus()
        finally:
            ray.shutdown()
    if spec.resources.get("num_gpus") is not None:
        num_gpus = float(spec.resources["num_gpus"])
        return num_gpus, f"resources.num_gpus is {num_gpus:g}"
    import torch

    count = float(torch.cuda.device_count())
    return count, f"this machine has {count:g} (torch.cuda.device_count())"


def check_gpus(requests: list[tuple[str, float]], available: float, source: str) -> None:
    """SweepError for the first trial whose GPU request exceeds ``available`` (it could never be placed);
    ``source``: the phrase of :func:`available_gpus` (how many GPUs there are, and where they were counted)."""
    for where, need in requests:
        if need > available + 1e-9:
            raise SweepError(
                f"{where}: a trial asks for {need:g} GPUs but {source}; it could never be placed and Tune "
                f"would wait for it forever. Lower {_GPU_FIELDS}, or add GPUs"
            )
