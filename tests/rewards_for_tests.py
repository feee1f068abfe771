"""Deliberately broken rewards, to check that the run fails with a clear error naming them."""

import numpy as np


def nan_reward(sequences):
    out = np.ones(len(sequences))
    out[1] = np.nan
    return out


def wrong_count(sequences):
    return np.ones(len(sequences) - 1)


def raising(sequences):
    raise KeyError("no such table")


_calls = {"n": 0}


def nan_after_first_call(sequences):
    """Fine on its first call (in each process), NaN afterwards."""
    _calls["n"] += 1
    out = np.ones(len(sequences))
    if _calls["n"] > 1:
        out[:] = np.nan
    return out


def ones(sequences):
    """A well-behaved reward: 1.0 for every sequence."""
    return np.ones(len(sequences))


def sleepy(sequences):
    """Gives no answer for 20 s: longer than any test's reward_timeout_s."""
    import time

    time.sleep(20)
    return np.ones(len(sequences))


not_callable = 42


class Exploding:
    """A reward class whose constructor fails: checking its spec must not build it."""

    def __init__(self):
        raise RuntimeError("Exploding was instantiated")

    def __call__(self, sequences):
        return np.ones(len(sequences))


def slow_fraction_a(sequences):
    """The toy task's reward (the fraction of A), after 0.3 s per batched call: a slow oracle."""
    import time

    time.sleep(0.3)
    return np.array([s.count("A") / max(1, len(s)) for s in sequences])
