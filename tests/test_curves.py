"""Watching a run: TensorBoard curves (the same tags for runs and sweeps), curves.png, progress lines with the
calls spent and the time left, and plain progress lines when the output is not a terminal."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from sepo_ray.curves import TAGS, history_row, plot_curves, scalars
from sepo_ray.progress import PlainProgress, eta_text, progress

SMALL = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4"]


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files of ``folder``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_history_rows_and_their_tags():
    result = {"sepo": {"reward_mean": 0.5, "reward_median": 0.4, "kl": 0.1, "clip_frac": 0.0, "validation_score": 1.5,
                       "critic_value_loss": 2.0, "reward_max": 9.0}, "num_env_steps_sampled_lifetime": 64}  # fmt: skip
    row = history_row(result, 2, 3.25)
    assert row == {"iteration": 2, "reward_mean": 0.5, "reward_median": 0.4, "kl": 0.1, "clip_frac": 0.0,
                   "time_s": 3.25, "oracle_calls": 64, "validation_score": 1.5, "critic_value_loss": 2.0}  # fmt: skip
    tags = scalars({**row, "kl": float("nan")})
    assert "sepo/kl" not in tags and tags["sepo/critic_value_loss"] == 2.0
    assert tags["calls/oracle_calls"] == 64 and set(tags) <= {*TAGS.values(), "sepo/critic_value_loss"}


def test_curves_png_of_a_history(tmp_path):
    history = [{"iteration": i, "reward_mean": i / 10, "reward_median": i / 9, "kl": 0.1 * i, "clip_frac": 0.0,
                "oracle_calls": 8 * i, "validation_score": -1.0 + i / 5} for i in range(1, 5)]  # fmt: skip
    assert plot_curves(history, tmp_path / "curves.png").stat().st_size > 10_000
    assert plot_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_plain_progress_prints_a_line_every_few_seconds_not_a_bar(monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 6.0, 7.0, 13.0, 14.0])
    monkeypatch.setattr("sepo_ray.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = PlainProgress(64, "sampling", stream=out)  # started at 0 s
    for _ in range(5):  # at 1, 2, 6, 7, 13 s
        bar.update(8)
    lines = out.getvalue().splitlines()
    assert lines == [
        "sampling: 24/64 steps (38 %), 6 s, ETA 10 s",
        "sampling: 40/64 steps (62 %), 13 s, ETA 8 s",
    ]
    assert "\r" not in out.getvalue()
    assert isinstance(progress(10, "x"), PlainProgress)  # pytest's stderr is not a terminal
    assert eta_text(3725) == "1 h 02 min" and eta_text(65) == "1 min 05 s"


@pytest.mark.slow
def test_a_run_writes_tensorboard_curves_and_exports_a_model_folder(ray_session, tmp_path, capsys):
    import torch

    from sepo_ray.cli.evaluate import main as evaluate
    from sepo_ray.cli.export import main as export
    from sepo_ray.cli.run import main as run
    from sepo_ray.models import load_model, save_model

    out = tmp_path / "run"
    assert run(["toy", "--output", str(out), "--iterations", "3", "--eval-samples", "16", *SMALL]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(line for line in lines if line.startswith("iter   1/3"))
    assert "| calls 8/24 |" in first and "ETA" in first
    assert "ETA" not in next(line for line in lines if line.startswith("iter   3/3"))
    assert list(out.glob("events.out.tfevents.*")) and (out / "curves.png").stat().st_size > 0
    curves = read_scalars(out)
    assert [s for s, _ in curves["sepo/reward_mean"]] == [8, 16, 24]  # x axis: oracle calls spent
    history = json.loads((out / "result.json").read_text())["history"]
    assert [v for _, v in curves["sepo/kl"]] == pytest.approx([h["kl"] for h in history])
    # export: a self-describing folder that every command loads
    model = tmp_path / "model"
    assert export([str(out), "--output", str(model)]) == 0
    assert sorted(p.name for p in model.iterdir()) == ["README.md", "config.json", "generator.safetensors"]
    config = json.loads((model / "config.json").read_text())
    assert config["task"] == "toy" and config["iteration"] == 3 and config["oracle_calls"] == 24
    card = (model / "README.md").read_text()
    assert "24 reward calls" in card and "## Measured" in card and "sepo-ray design toy --model DIR" in card
    weights = load_model(out / "checkpoints" / "iter_0003" / "generator.safetensors").state_dict()
    assert all(
        torch.equal(v, load_model(model / "generator.safetensors").state_dict()[k])
        for k, v in weights.items()
    )
    assert export([str(out), "--output", str(model)]) == 2  # never over an existing folder
    assert "never writes over a folder" in capsys.readouterr().err
    assert evaluate(["toy", "--model", str(model), "--num-samples", "8", "--seeds", "0", "--steps", "4",
                     "--output", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert "model" in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    again = tmp_path / "again"
    assert run(["toy", "--output", str(again), "--iterations", "1", "--no-eval", "--set", f"generator={model}",
                *SMALL]) == 0  # fmt: skip
    assert json.loads((again / "result.json").read_text())["settings"]["generator"] == str(model)
    # a run whose weights are not finite is refused, naming the parameter
    net = load_model(out / "checkpoints" / "iter_0003" / "generator.safetensors")
    with torch.no_grad():
        next(iter(net.parameters())).view(-1)[:2] = float("nan")
    save_model(net, out / "checkpoints" / "iter_0003" / "generator.safetensors")
    capsys.readouterr()
    assert export([str(out), "--output", str(tmp_path / "bad")]) == 2
    assert "non-finite weights" in capsys.readouterr().err and not (tmp_path / "bad").exists()
