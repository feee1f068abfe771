"""The DHS table, its chromosome splits, and the DNA token utilities."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from sepo_ray.tasks.dna.data import (
    CELL_TYPES,
    DHS_SHA256,
    HALF_A_CHROMS,
    HALF_B_CHROMS,
    HEPG2,
    as_tokens,
    decode,
    dinucleotide_shuffle,
    dinucleotide_shuffle_batch,
    encode,
    kmer_counts,
    kmer_frequencies,
    load_dhs,
    reverse_complement,
    validate_sequences,
)
from sepo_ray.tasks.dna.data import dhs as dhs_module


@pytest.fixture(scope="module")
def data():
    return load_dhs()


def test_table_shape_hash_and_labels(data):
    assert len(data) == 47_872 and data.tokens.shape == (47_872, 200)
    assert data.sha256 == DHS_SHA256
    assert np.bincount(data.cell_type).tolist() == [11_968] * 4
    assert CELL_TYPES[HEPG2] == "HepG2" and data.is_hepg2.sum() == 11_968
    assert decode(data.tokens[:3]) == data.sequences[:3]


def test_splits_are_disjoint_chromosome_halves(data):
    sizes = {name: len(data.split(name)) for name in ("half_a", "half_b", "validation", "test")}
    assert sizes == {"half_a": 20_353, "half_b": 18_901, "validation": 4_053, "test": 4_565}
    assert sum(sizes.values()) == len(data)  # every row in exactly one split
    assert set(HALF_A_CHROMS).isdisjoint(HALF_B_CHROMS)
    for half in ("half_a", "half_b"):
        chroms = set(data.chrom[data.split(half)])
        assert "chr1" not in chroms and "chr2" not in chroms
        assert set(data.data_label[data.split(half)]) == {"training"}
    assert set(data.chrom[data.split("test")]) == {"chr1"} and set(data.data_label[data.split("test")]) == {
        "test"
    }
    assert set(data.chrom[data.split("validation")]) == {"chr2"}
    with pytest.raises(ValueError, match="split must be one of"):
        data.split("train")


def test_missing_table_error_names_the_fix(monkeypatch):
    monkeypatch.delenv(dhs_module.DHS_PATH_ENV, raising=False)
    monkeypatch.setattr(dhs_module.importlib.metadata, "files", lambda name: [])
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps dnadiffusion==0\.0\.0\.dev0"):
        dhs_module.dhs_table_path()


def test_hash_mismatch_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "table.txt"
    fake.write_text("chr\tsequence\n")
    monkeypatch.setenv(dhs_module.DHS_PATH_ENV, str(fake))
    with pytest.raises(ValueError, match=DHS_SHA256):
        load_dhs.__wrapped__()  # bypass the per-process cache


def test_encode_decode_and_validation_errors():
    seqs = ["ACGT" * 50, "TTGCA" * 40]
    x = encode(seqs)
    assert x.dtype == torch.long and x.shape == (2, 200)
    assert x[0, :4].tolist() == [0, 1, 2, 3]
    assert decode(x) == seqs
    assert torch.equal(as_tokens(x), x) and torch.equal(as_tokens(x.numpy()), x)
    bad = ["A" * 200, "A" * 57 + "N" + "A" * 142]
    with pytest.raises(ValueError, match=r"sequences\[1\]: invalid character 'N' at position 57"):
        encode(bad)
    with pytest.raises(ValueError, match=r"sequences\[0\]: invalid character 'a'"):
        encode(["a" + "A" * 199])
    with pytest.raises(ValueError, match=r"sequences\[1\]: length 199, expected 200"):
        encode(["A" * 200, "A" * 199])
    with pytest.raises(ValueError, match=r"sequences\[1\]: token 4 at position 3"):
        validate_sequences(torch.tensor([[0] * 200, [0, 0, 0, 4] + [0] * 196]))
    with pytest.raises(ValueError, match="length 10, expected 200"):
        validate_sequences(torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="single str"):
        encode("ACGT" * 50)


def test_reverse_complement_and_kmers():
    x = encode(["AACG"], length=4)
    assert decode(reverse_complement(x)) == ["CGTT"]
    assert torch.equal(reverse_complement(reverse_complement(x)), x)
    counts = kmer_counts(encode(["AAAC"], length=4), 2)  # AA twice, AC once
    assert counts.shape == (1, 16) and counts[0, 0] == 2 and counts[0, 1] == 1 and counts.sum() == 3
    freq = kmer_frequencies(encode(["ACGT", "ACGT"], length=4), 1)
    np.testing.assert_allclose(freq, [0.25] * 4)


def test_dinucleotide_shuffle_preserves_counts(data):
    rng = np.random.default_rng(0)
    x = data.tokens[:100]
    y = dinucleotide_shuffle_batch(x, rng)
    np.testing.assert_array_equal(kmer_counts(x, 2), kmer_counts(y, 2))
    np.testing.assert_array_equal(kmer_counts(x, 1), kmer_counts(y, 1))
    assert torch.equal(x[:, 0], y[:, 0]) and torch.equal(x[:, -1], y[:, -1])
    assert (x != y).float().mean() > 0.5  # it does shuffle


def test_dinucleotide_shuffle_is_uniform_over_all_eulerian_paths():
    seq = np.array([0, 1, 0, 2, 0, 1, 2, 0])  # 6 distinct sequences share its dinucleotide counts
    target = Counter(zip(seq[:-1].tolist(), seq[1:].tolist()))
    # brute force: every arrangement of the letters with the same first base and dinucleotide counts
    exact = {
        p
        for p in itertools.permutations(seq.tolist())
        if p[0] == seq[0] and Counter(zip(p[:-1], p[1:])) == target
    }
    rng = np.random.default_rng(1)
    draws = Counter(tuple(dinucleotide_shuffle(seq, rng).tolist()) for _ in range(6000))
    assert len(exact) == 6 and set(draws) == exact
    expected = 6000 / len(exact)
    assert all(abs(c - expected) < 5 * np.sqrt(expected) for c in draws.values())
