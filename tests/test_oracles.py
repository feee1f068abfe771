"""Reward oracles: the shared interface, input validation, the shipped artifacts' quality, the motif scanner."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sepo_ray.oracles import get_oracle, oracle_names
from sepo_ray.stats import auroc
from sepo_ray.tasks.dna.data import (
    HEPG2,
    decode,
    dinucleotide_shuffle_batch,
    encode,
    load_dhs,
    reverse_complement,
)
from sepo_ray.tasks.dna.motifs import MotifScanner, log_odds_pwm, score_threshold


@pytest.fixture(scope="module")
def heldout():
    """400 HepG2 and 400 other DHS of the test chromosome (chr1), seeded."""
    data = load_dhs()
    test = data.split("test")
    rng = np.random.default_rng(0)
    pos = rng.choice(test[data.cell_type[test] == HEPG2], 400, replace=False)
    neg = rng.choice(test[data.cell_type[test] != HEPG2], 400, replace=False)
    rows = np.concatenate([pos, neg])
    return data.tokens[rows], np.r_[np.ones(400), np.zeros(400)].astype(bool)


@pytest.fixture(scope="module")
def oracles():
    return {name: get_oracle(name) for name in ("dna_ft", "dna_eval", "dna_atac", "dna_ft_accessible")}


def test_registry():
    assert set(oracle_names()) >= {"dna_ft", "dna_eval", "dna_atac", "dna_ft_accessible", "motif_count"}
    with pytest.raises(ValueError, match=r"oracle name must be one of \['dna_atac', 'dna_eval'"):
        get_oracle("dna_typo")


def test_interface_strings_tokens_and_strands(oracles, heldout):
    x = heldout[0][:16]
    seqs = decode(x)
    for name, oracle in oracles.items():
        a, b = oracle(seqs), oracle(x)
        assert a.dtype == np.float64 and a.shape == (16,) and np.isfinite(a).all(), name
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(oracle(reverse_complement(x)), b, rtol=1e-5, atol=1e-5)  # strand-symmetric
        assert oracle([]).shape == (0,)
    probs = oracles["dna_atac"](x)
    assert ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.parametrize("name", ["dna_ft", "dna_eval", "dna_atac", "dna_ft_accessible", "motif_count"])
def test_bad_sequences_are_named(name, oracles):
    oracle = oracles.get(name) or get_oracle(name)
    good = "ACGT" * 50
    with pytest.raises(ValueError, match=r"sequences\[2\]: invalid character 'N' at position 5"):
        oracle([good, good, good[:5] + "N" + good[6:]])
    with pytest.raises(ValueError, match=r"sequences\[1\]: length 201, expected 200"):
        oracle([good, good + "A"])
    with pytest.raises(ValueError, match=r"sequences\[0\]: token 4"):
        oracle(torch.full((1, 200), 4))


def test_oracles_separate_hepg2_and_agree(oracles, heldout):
    x, is_hepg2 = heldout
    ft, ev = oracles["dna_ft"](x), oracles["dna_eval"](x)
    assert auroc(ft, is_hepg2) >= 0.85
    assert auroc(ev, is_hepg2) >= 0.85
    assert np.corrcoef(ft, ev)[0, 1] >= 0.7
    assert np.median(ev[is_hepg2]) > np.median(ev[~is_hepg2])
    assert type(oracles["dna_ft"].model).__name__ != type(oracles["dna_eval"].model).__name__  # two families


def test_accessibility_prefers_real_dhs(oracles, heldout):
    x = heldout[0]
    shuffled = dinucleotide_shuffle_batch(x, np.random.default_rng(0))
    real, fake = oracles["dna_atac"](x), oracles["dna_atac"](shuffled)
    assert auroc(np.r_[real, fake], np.r_[np.ones(len(real)), np.zeros(len(fake))].astype(bool)) >= 0.75


def test_accessible_reward_is_activity_plus_guarded_accessibility(oracles, heldout):
    from sepo_ray.tasks.dna.oracles import AccessibleFTOracle, ClassifierOracle, artifact_path

    x = heldout[0]
    shuffled = dinucleotide_shuffle_batch(x, np.random.default_rng(1))
    guard = ClassifierOracle(artifact_path("ft_accessibility"), "logit")
    # the guard is another family on chromosome half A, not the evaluation's ATAC classifier, and it works
    assert type(guard.model).__name__ != type(oracles["dna_atac"].model).__name__
    real, fake = guard(x), guard(shuffled)
    assert auroc(np.r_[real, fake], np.r_[np.ones(len(real)), np.zeros(len(fake))].astype(bool)) >= 0.75
    # reward = HepG2 log-odds + weight * log sigmoid(guard logit), exactly
    ft = oracles["dna_ft"](x)
    expected = ft + np.log(1.0 / (1.0 + np.exp(-real)))
    np.testing.assert_allclose(oracles["dna_ft_accessible"](x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(AccessibleFTOracle(weight=0.0)(x), ft, rtol=1e-6, atol=1e-6)
    # the penalty only: at most 0, and larger for shuffled-looking sequences
    penalty = oracles["dna_ft_accessible"](shuffled) - oracles["dna_ft"](shuffled)
    assert (penalty <= 0).all() and penalty.mean() < (expected - ft).mean()
    for bad in (-1.0, float("nan"), float("inf"), "heavy", None):
        with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
            AccessibleFTOracle(weight=bad)


def test_score_threshold_matches_enumeration():
    rng = np.random.default_rng(0)
    pwm = np.round(rng.normal(size=(4, 4)), 2)  # 256 windows: enumerate them all
    scores = np.array([sum(pwm[j, w[j]] for j in range(4)) for w in itertools.product(range(4), repeat=4)])
    for p in (0.01, 0.05, 0.2):
        thr = score_threshold(pwm, p)
        assert (scores >= thr).mean() <= p + 1e-12
        assert (scores >= np.max(scores[scores < thr])).mean() > p  # the next lower score would exceed p


def test_motif_scanner_counts_planted_sites_on_both_strands():
    counts = np.array([[10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 10, 0], [0, 0, 0, 10]] * 2)  # ACGTACGT
    scanner = MotifScanner({"toy": counts}, pvalue=1e-4)
    assert log_odds_pwm(counts).shape == (8, 4)
    background = "C" * 200  # no toy site
    plant = "C" * 50 + "ACGTACGT" + "C" * 142
    rc_plant = "C" * 150 + decode(reverse_complement(encode(["ACGTACGT"], length=8)))[0] + "C" * 42
    hits = scanner.hits([background, plant, rc_plant, "ACGTACGT" + "C" * 192])
    assert hits[:, 0].tolist() == [0, 1, 1, 1]  # ACGTACGT is its own reverse complement: counted once


def test_liver_motifs_enriched_in_hepg2(heldout):
    x, is_hepg2 = heldout
    hits = get_oracle("motif_count")(x)
    assert hits[is_hepg2].mean() > 2 * hits[~is_hepg2].mean()


def test_dna_task_interface(heldout):
    from sepo_ray.oracles.pool import resolve_reward
    from sepo_ray.tasks import get_task

    task = get_task("dna")
    x = heldout[0][:8]
    seqs = task.decode(x)
    np.testing.assert_allclose(resolve_reward(task.default_reward)(seqs), get_oracle("dna_ft")(x), rtol=1e-6)
    assert torch.equal(task.encode(seqs), x)
    assert task.build_denoiser()(torch.full((1, task.length), task.num_tokens)).shape == (1, 200, 4)
    held = task.validation(seqs)
    assert set(held) == {"validation_score", "validation_realism"}
    assert held["validation_score"] == pytest.approx(
        float(np.median(get_oracle("dna_ft")(x))), rel=1e-6
    )  # the training oracle, never the evaluation one
    sampled = task.sample(task.build_denoiser(), 4, 2, seed=0)
    assert sampled == task.sample(task.build_denoiser(), 4, 2, seed=0) and all(len(s) == 200 for s in sampled)


def test_shipped_classifier_cards_are_the_pretraining_configs(tmp_path):
    """Every shipped classifier was trained with the config `python -m sepo_ray.pretrain dna` would use, and
    the accessibility guard's recipe trains end to end (a few rows) into a loadable logit oracle."""
    import dataclasses
    import json

    from sepo_ray.tasks.dna.data import load_dhs
    from sepo_ray.tasks.dna.oracles import ClassifierOracle, artifact_path
    from sepo_ray.tasks.dna.pretrain import CONFIGS, GENERATORS, MODEL_NAMES, train_classifier

    for name in (n for n in MODEL_NAMES if n not in GENERATORS):
        card = json.loads(artifact_path(name).with_suffix(".json").read_text())
        assert card["train_config"] == json.loads(json.dumps(dataclasses.asdict(CONFIGS[name]))), name
    guard = json.loads(artifact_path("ft_accessibility").with_suffix(".json").read_text())
    ft_card = json.loads(artifact_path("ft_oracle").with_suffix(".json").read_text())
    assert (
        guard["data"]["train_chromosomes"] == ft_card["data"]["train_chromosomes"]
    )  # half A, the reward's half
    atac = json.loads(artifact_path("accessibility").with_suffix(".json").read_text())
    assert guard["class"] != atac["class"] and guard["heldout"]["test"]["auroc_real_vs_shuffled"] > 0.85
    small = dataclasses.replace(CONFIGS["ft_accessibility"], epochs=1, max_train_rows=256, max_eval_rows=64)
    train_classifier(load_dhs(), "ft_accessibility", small, tmp_path, threads=1, log=lambda msg: None)
    logits = ClassifierOracle(tmp_path / "ft_accessibility.safetensors", "logit")(["ACGT" * 50] * 3)
    assert logits.shape == (3,) and np.isfinite(logits).all()
