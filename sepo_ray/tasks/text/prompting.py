"""Prompts of the text task: seeded openings of IMDB reviews, cut at a word boundary (paper App. E.1 prompts).

The task conditions fine-tuning on ``train`` openings, its validation signal on ``validation`` openings and the
evaluation table on ``test`` openings (the split is :mod:`.corpus`'s).
"""

from __future__ import annotations

import numpy as np

from .corpus import _starts_word, gpt2_tokenizer, imdb_split, tokenize


def prompts(
    split: str = "test",
    num_tokens_range: tuple[int, int] = (8, 16),
    seed: int = 0,
    count: int | None = None,
) -> list[str]:
    """Openings of reviews of ``split`` (see :func:`prompted_reviews`, which also returns the reviews)."""
    return prompted_reviews(split, num_tokens_range, seed, count)[0]


def prompted_reviews(
    split: str = "test",
    num_tokens_range: tuple[int, int] = (8, 16),
    seed: int = 0,
    count: int | None = None,
) -> tuple[list[str], list[str]]:
    """(prompts, reviews): openings of reviews of ``split`` (a :data:`~.corpus.SPLITS` name), for prompt-conditioned
    generation (paper App. E.1 prompts).

    Distinct reviews are taken in a seeded random order (``count`` None: all of the split; ``prompts(count=k)``
    is a prefix of ``prompts(count=m)`` for k < m; the split holds a few duplicated reviews, used once). Each prompt is the first n GPT-2 tokens of its review, n drawn
    uniformly from ``num_tokens_range`` (both ends included) and then moved down, within the range, to the last
    word boundary (the next token starts with a space) so that no prompt ends mid-word; re-tokenising a prompt
    then gives back its n tokens. A review shorter than n tokens is used whole. ``reviews[i]`` is the whole
    (cleaned) review that ``prompts[i]`` opens: its real continuation.
    """
    lo, hi = num_tokens_range
    if not 1 <= lo <= hi:
        raise ValueError(f"num_tokens_range must satisfy 1 <= lo <= hi, got {num_tokens_range}")
    texts = list(dict.fromkeys(imdb_split(split)["text"]))  # distinct, in file order
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    lengths = rng.integers(lo, hi + 1, size=len(texts))  # drawn for every review: independent of count
    if count is not None:
        if not 0 <= count <= len(texts):
            raise ValueError(f"count must lie in [0, {len(texts)}] for split {split!r}, got {count}")
        order = order[:count]
    # Only the opening needs tokenising: a generous character prefix holds > hi + 1 tokens (checked below).
    chars = 16 * (hi + 2) + 64
    heads = tokenize([texts[i][:chars] for i in order])
    starts_word = _starts_word()
    tok, out = gpt2_tokenizer(), []
    for j, i in enumerate(order):
        ids = heads[j]
        if len(ids) < hi + 2 and len(texts[i]) > chars:  # unusually long tokens: tokenise the whole review
            ids = tokenize([texts[i]])[0]
        n = min(int(lengths[i]), len(ids))
        cut = next((k for k in range(n, lo - 1, -1) if k == len(ids) or starts_word[ids[k]]), n)
        out.append(tok.decode(ids[:cut].tolist(), clean_up_tokenization_spaces=False))
    return out, [texts[i] for i in order]
