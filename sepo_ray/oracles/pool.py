"""Reward-oracle actors: a pool of Ray actors that serve any reward, batched and restartable.

A *reward spec* is a string naming what to score sequences with:

- a registered oracle name (:mod:`sepo_ray.oracles.registry`: the entry-point group ``sepo_ray.oracles``);
- ``"module:function"``: any importable callable taking a list of sequences (strings) and returning one
  float per sequence; a class at that path is instantiated once (with no arguments) and then called;
- ``"hf:DIR"`` (or ``"hf:DIR#LABEL"``): a local Hugging Face sequence-classification model folder
  (:mod:`sepo_ray.oracles.hf`), its logit (or the chosen label's log-odds) as the reward.

``check_reward_spec(spec)`` checks that a spec names something (an import, no model built);
``resolve_reward(spec)`` turns a spec into a validated in-process callable; ``RewardPool`` serves the same
callable from ``num_actors`` Ray actors, one batched call per actor per request. An actor that dies is
restarted by Ray (``max_restarts``) and the in-flight chunk is sent again, so no batch is lost. Rewards that
are not finite, have the wrong count, raise, or give no answer within ``timeout_s`` (the setting
``reward_timeout_s``, in both paths) become a :class:`RewardError` naming the reward.
"""

from __future__ import annotations

import numbers
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import numpy as np


class RewardError(RuntimeError):
    """A reward returned something unusable (wrong count, non-finite values) or raised."""


def import_callable(spec: str, what: str = "reward") -> Callable:
    """The callable a ``module:function`` spec names (a class is instantiated); ValueError naming ``what``."""
    from sepo_ray.runtime import import_object

    obj = import_object(spec, what)
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise ValueError(f"{what} {spec!r}: {spec.partition(':')[2]!r} is not callable")
    return obj


def check_reward_spec(spec: str) -> None:
    """Checks cheaply that a reward spec names something, building nothing; ValueError (one line) otherwise.

    ``module:function`` must import and name a callable (a class is not instantiated); a bare name must be
    a registered oracle name (:func:`sepo_ray.oracles.registry.oracle_specs`).
    """
    from sepo_ray.runtime import import_object

    if not isinstance(spec, str) or not spec:
        raise ValueError(f"reward: expected a non-empty string spec, got {spec!r}")
    if spec.startswith("hf:"):
        from sepo_ray.oracles.hf import check_spec

        check_spec(spec)
        return
    if ":" not in spec:
        from .registry import oracle_specs

        specs = oracle_specs()
        if spec not in specs:
            raise ValueError(
                f"reward {spec!r} is not a registered oracle name; use one of {sorted(specs)} "
                "or a 'module:function' spec"
            )
        spec, what = specs[spec], f"reward {spec!r}: registered oracle"
    else:
        what = "reward"
    try:
        obj = import_object(spec, what)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - a module that fails on import (SyntaxError, ...) is named
        module = spec.partition(":")[0]
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{what} {spec!r}: importing module {module!r} raised {type(e).__name__}: {first_line}"
        ) from None
    if not callable(obj):
        raise ValueError(
            f"{what} {spec!r}: {spec.partition(':')[2]!r} is a {type(obj).__name__}, not a callable"
        )


def _check_timeout(timeout_s: float | None, optional: bool = True) -> float | None:
    """``timeout_s`` as a float > 0 (None passes only when ``optional``); ValueError naming the setting."""
    if timeout_s is None and optional:
        return None
    if not isinstance(timeout_s, numbers.Real) or isinstance(timeout_s, bool):
        raise ValueError(f"reward_timeout_s must be a number of seconds > 0, got {timeout_s!r}")
    timeout_s = float(timeout_s)
    if not timeout_s > 0:  # also refuses NaN
        raise ValueError(f"reward_timeout_s must be > 0 seconds, got {timeout_s}")
    return timeout_s


def _no_answer(spec: str, timeout_s: float, where: str = "") -> RewardError:
    return RewardError(
        f"reward {spec!r} gave no answer in {timeout_s:g} s{where}; raise reward_timeout_s if it is only slow"
    )


def _call_in_thread(fn: Callable[[], object], timeout_s: float, spec: str):
    """``fn()`` in a daemon thread; its result or exception, or a :class:`RewardError` after ``timeout_s``.

    A thread that does not return cannot be stopped: it is left behind (a daemon, so it never blocks the
    process from exiting) and the caller gets the error instead of hanging with it.
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["out"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"reward {spec}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise _no_answer(spec, timeout_s)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["out"]


def resolve_reward(spec: str, timeout_s: float | None = None) -> Callable[[Sequence[str]], np.ndarray]:
    """Returns ``fn(sequences) -> float64 (N,)`` for a reward spec, validating every output.

    Raises ValueError for a spec that names nothing; the returned callable raises :class:`RewardError`
    for a wrong count, non-finite values or an exception inside the reward, and, with ``timeout_s``
    (seconds, the setting ``reward_timeout_s``), for a call that gives no answer in time (the reward then
    runs in a worker thread).
    """
    timeout_s = _check_timeout(timeout_s)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"reward: expected a non-empty string spec, got {spec!r}")
    if spec.startswith("hf:"):  # a local Hugging Face sequence-classification folder
        from sepo_ray.oracles.hf import HFSequenceClassifierReward

        raw = HFSequenceClassifierReward(spec)
    elif ":" in spec:
        raw = import_callable(spec)
    else:
        from .registry import get_oracle

        raw = get_oracle(spec)

    def call(sequences: list[str]):
        try:
            return raw(sequences)
        except RewardError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure inside user code is reported with its name
            raise RewardError(f"reward {spec!r} raised {type(e).__name__}: {e}") from e

    def reward(sequences: Sequence[str]) -> np.ndarray:
        sequences = list(sequences)
        if timeout_s is None:
            out = call(sequences)
        else:
            out = _call_in_thread(lambda: call(sequences), timeout_s, spec)
        return validate_rewards(out, len(sequences), spec)

    reward.spec = spec  # type: ignore[attr-defined]
    reward.timeout_s = timeout_s  # type: ignore[attr-defined]
    return reward


def validate_rewards(values, expected: int, spec: str) -> np.ndarray:
    """Checks that ``values`` is ``expected`` finite floats; returns them as float64 (N,)."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise RewardError(f"reward {spec!r} returned a value that is not a list of floats: {e}") from e
    if arr.shape[0] != expected:
        raise RewardError(f"reward {spec!r} returned {arr.shape[0]} values for {expected} sequences")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise RewardError(
            f"reward {spec!r} returned non-finite values ({arr[bad[0]]!r} for sequence {int(bad[0])}, "
            f"{bad.size} in all)"
        )
    return arr


class _RewardActorImpl:
    """Holds one reward callable on its own device; ``score`` is one batched call."""

    def __init__(self, spec: str):
        import torch

        torch.set_num_threads(1)
        self.spec = spec
        self.fn = resolve_reward(spec)
        self.calls = 0

    def score(self, sequences: list[str]) -> np.ndarray:
        self.calls += 1
        return self.fn(sequences)

    def pid(self) -> int:
        import os

        return os.getpid()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class RewardPool:
    """``num_actors`` Ray actors serving one reward spec; ``score`` splits a batch evenly across them.

    Actors are named ``f"{name}-{i}"`` so that rollout workers can find them with :meth:`connect`; ``resource``
    (a custom Ray resource, of which each actor asks 0.001) pins them to the nodes that offer it; the
    creator keeps the handles (a named actor whose handles are all gone is collected). ``timeout_s`` (seconds
    per batched call, the setting ``reward_timeout_s``): a hung oracle becomes a RewardError, not a hung run.
    """

    def __init__(
        self,
        spec: str,
        *,
        num_actors: int = 1,
        num_gpus: float = 0.0,
        num_cpus: float = 0.0,
        max_restarts: int = 3,
        timeout_s: float = 600.0,
        name: str | None = None,
        namespace: str | None = None,
        resource: str | None = None,
    ):
        import ray

        if num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {num_actors}")
        if num_gpus < 0:
            raise ValueError(f"num_gpus must be >= 0, got {num_gpus}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        self.timeout_s = _check_timeout(timeout_s, optional=False)
        check_reward_spec(spec)  # fail fast in the driver on a spec that names nothing (builds no model)
        self.spec = spec
        self.name = name or f"sepo-reward-{uuid.uuid4().hex[:12]}"  # not np.random: RLlib seeds it
        self.namespace = namespace or ray.get_runtime_context().namespace
        actor_cls = ray.remote(_RewardActorImpl)
        self.actors = [
            actor_cls.options(
                name=f"{self.name}-{i}",
                namespace=self.namespace,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources={resource: 1e-3} if resource else None,
                max_restarts=max_restarts,
                max_task_retries=max_restarts,
            ).remote(spec)
            for i in range(num_actors)
        ]
        self.max_retries = max(1, max_restarts)

    @classmethod
    def connect(
        cls,
        spec: str,
        name: str,
        num_actors: int,
        namespace: str,
        max_retries: int = 3,
        timeout_s: float = 600.0,
    ) -> RewardPool:
        """Handles to the actors of an existing pool (inside a rollout worker)."""
        import ray

        pool = cls.__new__(cls)
        pool.spec, pool.name, pool.namespace, pool.max_retries = spec, name, namespace, max(1, max_retries)
        pool.timeout_s = _check_timeout(timeout_s, optional=False)
        pool.actors = [ray.get_actor(f"{name}-{i}", namespace=namespace) for i in range(num_actors)]
        return pool

    def address(self) -> dict:
        """What a rollout worker needs to :meth:`connect` (plain strings: safe to checkpoint)."""
        return {
            "spec": self.spec,
            "name": self.name,
            "num_actors": len(self.actors),
            "namespace": self.namespace,
            "max_retries": self.max_retries,
            "timeout_s": self.timeout_s,
        }

    def score(self, sequences: Sequence[str]) -> np.ndarray:
        """One batched call per actor; chunks whose actor died are retried after its restart."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        sequences = list(sequences)
        if not sequences:
            return np.zeros(0)
        bounds = np.linspace(0, len(sequences), len(self.actors) + 1).astype(int)
        chunks = [(a, sequences[lo:hi]) for a, lo, hi in zip(self.actors, bounds[:-1], bounds[1:]) if hi > lo]
        results: list[np.ndarray | None] = [None] * len(chunks)
        for attempt in range(self.max_retries + 1):
            todo = [i for i, r in enumerate(results) if r is None]
            if not todo:
                break
            refs = {i: chunks[i][0].score.remote(chunks[i][1]) for i in todo}
            deadline = time.monotonic() + self.timeout_s  # the chunks run in parallel: one budget for all
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
                except GetTimeoutError:
                    raise _no_answer(self.spec, self.timeout_s, f" (actor {self.name}-{i})") from None
                except RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, RewardError):
                        raise RewardError(str(cause)) from None
                    raise RewardError(f"reward {self.spec!r} failed in its actor: {e}") from None
                except RayActorError:
                    if attempt == self.max_retries:
                        raise RewardError(
                            f"reward {self.spec!r}: actor {self.name}-{i} died {attempt + 1} times; giving up"
                        ) from None
                    time.sleep(0.5)  # let Ray restart the actor, then resend this chunk
        out = np.concatenate([np.asarray(r, dtype=np.float64) for r in results])
        return validate_rewards(out, len(sequences), self.spec)

    def kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
