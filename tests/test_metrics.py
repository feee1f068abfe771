"""DNA metrics on hand-made cases, and the full table on real sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sepo_ray.tasks.dna import metrics
from sepo_ray.tasks.dna.data import HEPG2, decode, load_dhs
from sepo_ray.tasks.dna.models import DNAConvDenoiser


def test_pearson_and_kmer3_corr_hand_cases():
    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))
    seqs = ["ACGT" * 50, "AACC" * 50]
    assert metrics.kmer3_corr(seqs, reference=seqs) == pytest.approx(1.0)
    # "AAA..." has only the 3-mer AAA (index 0): its frequency vector is e_0; against e_0 + e_63 -> Pearson
    ref = np.zeros(64)
    ref[[0, 63]] = 0.5
    expected = metrics.pearson(np.eye(64)[0], ref)
    assert metrics.kmer3_corr(["A" * 200], reference=ref) == pytest.approx(expected)


def test_scalar_metrics_hand_cases():
    assert metrics.pred_activity_median(np.array([-1.0, 0.5, 3.0])) == 0.5
    assert metrics.atac_acc(np.array([0.2, 0.6, 0.9, 0.5])) == 50.0  # strictly above 0.5
    assert metrics.log_lik_median(np.array([-300.0, -250.0, -260.0, -1.0])) == -255.0
    assert metrics.motif_enrichment(np.array([1.0, 1.0]), reference_mean=1.0) == pytest.approx(0.0)
    assert metrics.motif_enrichment(np.array([2.0, 2.0]), reference_mean=1.0) == pytest.approx(
        math.log2(2.01 / 1.01)
    )
    assert metrics.motif_enrichment(np.zeros(4), reference_mean=0.99) == pytest.approx(-math.log2(100.0))
    with pytest.raises(ValueError, match="pred_activity: no sequences"):
        metrics.pred_activity_median(np.array([]))


def test_summarize_keys():
    scores = {"pred_activity": np.array([1.0, 2.0]), "atac": np.array([0.9, 0.1]), "motif_count": np.ones(2)}
    scores["log_lik"] = np.array([-270.0, -260.0])
    out = metrics.summarize(scores, ["ACGT" * 50, "TGCA" * 50])
    assert tuple(out) == metrics.METRIC_KEYS
    assert out["pred_activity_median"] == 1.5 and out["atac_acc"] == 50.0 and out["log_lik_median"] == -265.0


@pytest.fixture(scope="module")
def tiny_scorer():
    torch.manual_seed(0)
    generator = DNAConvDenoiser(hidden_dim=8, num_cnn_stacks=1).eval()
    return metrics.DNAScorer(generator=generator, elbo_steps=2)


def test_scorer_on_real_sequences(tiny_scorer):
    data = load_dhs()
    test = data.split("test")
    hep = decode(data.tokens[test[data.cell_type[test] == HEPG2][:150]])
    other = decode(data.tokens[test[data.cell_type[test] != HEPG2][:150]])
    m_hep, m_other = tiny_scorer.metrics(hep), tiny_scorer.metrics(other)
    assert m_hep["pred_activity_median"] > m_other["pred_activity_median"]
    assert m_hep["motif_enrichment"] > m_other["motif_enrichment"]
    assert m_hep["kmer3_corr"] > 0.95 and m_hep["atac_acc"] > 50.0
    assert m_hep["log_lik_median"] < 0  # an ELBO in nats per 200 bp
    scores = tiny_scorer.scores(hep[:4], seed=3)
    assert set(scores) == set(metrics.SCORE_KEYS) and all(v.shape == (4,) for v in scores.values())
    np.testing.assert_array_equal(
        tiny_scorer.log_lik(data.tokens[:4], seed=3), tiny_scorer.log_lik(data.tokens[:4], seed=3)
    )
    with pytest.raises(ValueError, match=r"sequences\[1\]: invalid character 'X'"):
        tiny_scorer.metrics(["A" * 200, "X" * 200])


def test_dna_metrics_entry_point(tiny_scorer):
    out = metrics.dna_metrics(["ACGT" * 50] * 3, scorer=tiny_scorer)
    assert tuple(out) == metrics.METRIC_KEYS and all(np.isfinite(v) for v in out.values())
