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
