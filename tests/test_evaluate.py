"""The evaluator: rows over seeds, output files, the command line (tiny generator, few samples)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sepo_ray import evaluation
from sepo_ray.cli import evaluate
from sepo_ray.models import save_model
from sepo_ray.tasks import get_task
from sepo_ray.tasks.dna.metrics import METRIC_KEYS, DNAScorer, reference_sequences
from sepo_ray.tasks.dna.models import DNAConvDenoiser


@pytest.fixture(scope="module")
def tiny_generator():
    torch.manual_seed(0)
    return DNAConvDenoiser(hidden_dim=8, num_cnn_stacks=1).eval()


def test_reference_rows_are_seeded_test_chromosome_draws():
    a = reference_sequences("real_hepg2_test", 20, seed=0)
    assert a == reference_sequences("real_hepg2_test", 20, seed=0)
    assert a != reference_sequences("real_hepg2_test", 20, seed=1)
    assert len(set(a)) == 20 and all(len(s) == 200 for s in a)
    with pytest.raises(ValueError, match="only 958"):
        reference_sequences("real_hepg2_test", 959, seed=0)
    with pytest.raises(ValueError, match="name must be one of"):
        reference_sequences("real_k562", 5, seed=0)


def test_evaluate_rows_and_outputs(tiny_generator, tmp_path):
    scorer = DNAScorer(generator=tiny_generator, elbo_steps=2)
    rows = {
        "tiny": tiny_generator,
        "real_hepg2_test": lambda seed: reference_sequences("real_hepg2_test", 12, seed),
        "fixed": ["ACGT" * 50] * 12,
    }
    metrics, samples = evaluation.evaluate_rows(
        get_task("dna"), rows, seeds=(0, 1), num_samples=12, steps=4, scorer=scorer
    )
    assert list(metrics) == list(rows)
    for row in metrics.values():
        assert tuple(row) == METRIC_KEYS
        assert all(set(v) == {"mean", "std", "values"} and np.isfinite(v["mean"]) for v in row.values())
        assert all(len(v["values"]) == 2 for v in row.values())  # per seed, for intervals and paired verdicts
    assert metrics["fixed"]["kmer3_corr"]["std"] == 0.0  # same sequences for both seeds
    assert list(samples.columns) == [
        "row",
        "seed",
        "sequence",
        "pred_activity",
        "atac",
        "motif_count",
        "log_lik",
    ]
    assert len(samples) == 3 * 2 * 12
    # sampling is seeded: the same seed gives the same sequences
    _, again = evaluation.evaluate_rows(
        get_task("dna"), {"tiny": tiny_generator}, seeds=(0,), num_samples=12, steps=4, scorer=scorer
    )
    first = samples[(samples.row == "tiny") & (samples.seed == 0)]
    assert again.sequence.tolist() == first.sequence.tolist()
    out = evaluation.write_outputs(tmp_path / "ev", metrics, samples, scorer)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert pd.read_parquet(out / "samples.parquet").equals(samples)
    assert (out / "pred_activity.png").stat().st_size > 1000
    assert "| tiny |" in (out / "table.md").read_text()


def test_command_line(tiny_generator, tmp_path, capsys):
    path = save_model(tiny_generator, tmp_path / "tiny.safetensors")
    out = tmp_path / "cli"
    rc = evaluate.main(
        [
            "dna",
            "--model",
            str(path),
            "--num-samples",
            "6",
            "--seeds",
            "0,1",
            "--steps",
            "3",
            "--elbo-steps",
            "1",
        ]
        + ["--output", str(out)]
    )
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["tiny", "real_hepg2_test", "real_nonhepg2_test"]
    samples = pd.read_parquet(out / "samples.parquet")
    assert set(samples.seed) == {0, 1} and len(samples) == 3 * 2 * 6
    assert json.loads((out / "run.json").read_text())["steps"] == 3
    assert "real_nonhepg2_test" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        evaluate.main(["dna", "--output", str(out), "--seeds", "a,b"])
    with pytest.raises(ValueError, match="model weights must be"):
        evaluation.load_generator(get_task("dna"), tmp_path / "nothing_here")
    with pytest.raises(SystemExit):  # an output that is a file is refused before any work
        evaluate.main(["dna", "--output", str(path), "--num-samples", "2"])


def test_generic_scorer_table_and_paired_win_rates(tmp_path):
    """A task without its own scorer gets the reward table; a paired score gives win rates vs pretrained."""
    task = get_task("toy")
    scorer = task.scorer()
    rows = {"pretrained": task.build_denoiser(), "all_a": ["A" * 16] * 5}
    metrics, samples = evaluation.evaluate_rows(
        task, rows, seeds=(0, 1), num_samples=5, steps=2, scorer=scorer
    )
    assert metrics["all_a"]["reward_mean"] == {"mean": 1.0, "std": 0.0, "values": [1.0, 1.0]}
    assert "win_rate" not in metrics["all_a"]
    out = evaluation.write_outputs(tmp_path / "toy", metrics, samples, scorer)
    assert "| all_a | 1.000 (0.000) |" in (out / "table.md").read_text()
    scorer.paired_score = "reward"  # the instance only: pair each sequence with the pretrained one
    metrics, samples = evaluation.evaluate_rows(
        task, rows, seeds=(0, 1), num_samples=5, steps=2, scorer=scorer
    )
    assert metrics["all_a"]["win_rate"]["mean"] == 1.0 and metrics["pretrained"]["win_rate"]["mean"] == 0.5
    assert "win rate vs pretrained" in evaluation.format_table(metrics, scorer.metric_labels)
