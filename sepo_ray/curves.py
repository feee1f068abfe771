"""A run's curves, the same for ``run`` and for every sweep trial: TensorBoard scalars against the reward-oracle
calls spent, one line of history per iteration, and ``curves.png``.

:func:`history_row` reads one iteration's RLlib result; :class:`CurveWriter` writes its :data:`TAGS` as TensorBoard
scalars (``events.out.tfevents.*`` in the run folder, or in a sweep trial's folder through
:class:`SweepCurves`), the x axis being the oracle calls spent so far; :func:`plot_curves` draws the history.
``tensorboard --logdir runs/`` then shows every run and trial on the same axes and tags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

#: history key -> TensorBoard tag
TAGS = {
    "reward_mean": "sepo/reward_mean",
    "reward_median": "sepo/reward_median",
    "kl": "sepo/kl",
    "clip_frac": "sepo/clip_frac",
    "validation_score": "sepo/validation_score",
    "validation_realism": "sepo/validation_realism",
    "time_s": "time/iteration_s",
    "oracle_calls": "calls/oracle_calls",
}
#: RLlib's counter of sequences sampled: one reward-oracle call each
CALLS = "num_env_steps_sampled_lifetime"


def history_row(result: Mapping, iteration: int, seconds: float) -> dict:
    """One line of a run's history from an iteration's RLlib result: rewards, KL, clip fraction, time, oracle
    calls spent so far, and the validation signal and the critic's fit when present."""
    sepo_res = result.get("sepo", {})
    row = {"iteration": int(iteration)}
    for key in ("reward_mean", "reward_median", "kl", "clip_frac"):
        row[key] = float(sepo_res.get(key, math.nan))
    row["time_s"] = round(float(seconds), 3)
    if CALLS in result:
        row["oracle_calls"] = int(result[CALLS])
    for key, value in sepo_res.items():
        if key.startswith(("validation_", "critic_", "async_")):
            row[key] = float(value)
    return row


def scalars(row: Mapping) -> dict[str, float]:
    """The finite values of a history row, by TensorBoard tag (the critic's as ``sepo/critic_*``)."""
    out = {}
    for key, value in row.items():
        tag = TAGS.get(key) or (f"sepo/{key}" if key.startswith(("critic_", "async_")) else None)
        if tag is not None and isinstance(value, (int, float)) and math.isfinite(value):
            out[tag] = float(value)
    return out


class CurveWriter:
    """TensorBoard event files in ``folder``: each history row's :func:`scalars` at step = oracle calls spent."""

    def __init__(self, folder: str | Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(folder), flush_secs=10)

    def log(self, row: Mapping) -> None:
        step = int(row.get("oracle_calls", row["iteration"]))
        for tag, value in scalars(row).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_curves(history: Sequence[Mapping], path: str | Path, title: str = "") -> Path | None:
    """``curves.png``: reward (mean, median), path KL, clip fraction and, when measured, the validation score and
    realism, against the oracle calls spent. None when the history is empty."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [h.get("oracle_calls", h["iteration"]) for h in history]
    xlabel = "reward-oracle calls" if "oracle_calls" in history[0] else "iteration"
    panels = [("reward", ["reward_mean", "reward_median"]), ("path KL to the pretrained model", ["kl"]),
              ("clip fraction", ["clip_frac"])]  # fmt: skip
    heldout = [k for k in ("validation_score", "validation_realism") if any(k in h for h in history)]
    panels += [(k.replace("_", " "), [k]) for k in heldout]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (label, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(xi, h[key]) for xi, h in zip(x, history) if key in h and math.isfinite(h[key])]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, ms=3, label=key)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _sweep_callback_class():
    from ray.tune.logger import LoggerCallback

    class SweepCurves(LoggerCallback):
        """A Tune callback writing each trial's curves as ``run`` writes its own (same tags, same x axis)."""

        def __init__(self):
            self._writers = {}

        def log_trial_result(self, iteration, trial, result):
            if trial not in self._writers:
                trial.init_local_path()
                self._writers[trial] = CurveWriter(Path(trial.local_path) / "curves")
            seconds = result.get("time_this_iter_s", math.nan)
            self._writers[trial].log(
                history_row(result, result.get("training_iteration", iteration), seconds)
            )

        def log_trial_end(self, trial, failed=False):
            writer = self._writers.pop(trial, None)
            if writer is not None:
                writer.close()

    return SweepCurves


def sweep_callback():
    """A new Tune ``LoggerCallback`` that gives every sweep trial the curves a ``run`` writes."""
    return _sweep_callback_class()()
