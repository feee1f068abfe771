"""The text task's compact vocabulary (the most frequent GPT-2 tokens + UNK + MASK) and its training sequences.

The vocabulary is a statistic of the IMDB train split (:mod:`.corpus`), built at run time into the user cache and
never stored in the repository; :func:`training_sequences` cuts the reviews into fixed-length chunks of its ids
for pretraining the generator.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .corpus import (
    _CACHE_VERSION,
    GPT2_VOCAB_SIZE,
    REVIEWS_SHA256,
    _atomic_write,
    cache_dir,
    gpt2_tokenizer,
    split_token_lists,
    token_counts,
    tokenize,
)

DEFAULT_VOCAB_SIZE = 4096


class CompactVocab:
    """The N most frequent GPT-2 tokens, renumbered 0..N-1, plus UNK = N and MASK = N + 1.

    ``num_tokens`` = N + 1 clean tokens (UNK included); ``mask_id`` = ``num_tokens`` (the absorbing state, as
    in the DNA task); ``vocab_size`` = N + 2 embedding rows. Compact ids are ordered by decreasing frequency
    (ties: smaller GPT-2 id first). The saved form is the list of GPT-2 ids only (a statistic of the corpus,
    built at run time into the user cache, never stored in the repository).
    """

    def __init__(self, gpt2_ids: Sequence[int]):
        ids = np.asarray(list(gpt2_ids), dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError("CompactVocab needs a non-empty 1-D list of GPT-2 ids")
        if ids.min() < 0 or ids.max() >= GPT2_VOCAB_SIZE:
            raise ValueError(f"GPT-2 ids must lie in [0, {GPT2_VOCAB_SIZE}); got {ids.min()}..{ids.max()}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("CompactVocab: duplicated GPT-2 ids")
        self.gpt2_ids = tuple(int(i) for i in ids)
        self._to_gpt2 = torch.from_numpy(ids)  # (N,)
        # GPT-2 id -> compact id, UNK for the rest
        self._lut = torch.full((GPT2_VOCAB_SIZE,), len(ids), dtype=torch.long)  # (50257,)
        self._lut[self._to_gpt2] = torch.arange(len(ids))

    # sizes
    @property
    def size(self) -> int:
        """N: GPT-2 tokens kept."""
        return len(self.gpt2_ids)

    @property
    def unk_id(self) -> int:
        return self.size

    @property
    def num_tokens(self) -> int:
        """Clean tokens a sample may hold: N kept tokens + UNK."""
        return self.size + 1

    @property
    def mask_id(self) -> int:
        return self.num_tokens

    @property
    def vocab_size(self) -> int:
        """Embedding rows of a model over this vocabulary: clean tokens + MASK."""
        return self.num_tokens + 1

    def __eq__(self, other) -> bool:
        return isinstance(other, CompactVocab) and self.gpt2_ids == other.gpt2_ids

    def __hash__(self) -> int:
        return hash(self.gpt2_ids)

    def __repr__(self) -> str:
        return f"CompactVocab(size={self.size}, unk_id={self.unk_id}, mask_id={self.mask_id})"

    # id maps
    def from_gpt2(self, ids) -> Tensor:
        """GPT-2 ids (any shape; tensor, array or list) -> compact ids (LongTensor, same shape); tokens outside
        the vocabulary -> UNK."""
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64) if not isinstance(ids, Tensor) else ids).long()
        if ids.numel() and (ids.min() < 0 or ids.max() >= GPT2_VOCAB_SIZE):
            raise ValueError(f"GPT-2 ids must lie in [0, {GPT2_VOCAB_SIZE})")
        return self._lut[ids]

    def to_gpt2(self, ids, unk: int = -1) -> Tensor:
        """Compact ids (any shape) -> GPT-2 ids (LongTensor, same shape); UNK and MASK -> ``unk`` (default -1,
        which no embedding accepts: pass e.g. :data:`GPT2_EOS_ID` to feed a GPT-2 model)."""
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64) if not isinstance(ids, Tensor) else ids).long()
        if ids.numel() and (ids.min() < 0 or ids.max() > self.mask_id):
            raise ValueError(f"compact ids must lie in [0, {self.mask_id}]")
        table = torch.cat([self._to_gpt2, torch.tensor([unk, unk])])  # (N + 2,)
        return table[ids]

    # text
    def encode(self, texts: str | Sequence[str], length: int) -> Tensor:
        """LongTensor (B, length) of compact ids. Longer texts are truncated; shorter ones are right-padded with
        MASK (the positions a sampler fills, so an encoded prompt is the start state of its completion)."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), length), self.mask_id, dtype=torch.long)  # (B, L)
        for row, ids in enumerate(tokenize(texts)):
            ids = ids[:length]
            out[row, : len(ids)] = self.from_gpt2(ids)
        return out

    def decode(self, ids, unk: str = " <unk>", mask: str = " <mask>") -> str:
        """One sequence of compact ids (1-D) -> text. Runs of kept tokens are decoded by the GPT-2 tokenizer;
        each UNK becomes ``unk`` and each MASK ``mask`` (pass ``""`` to skip them). The default markers carry a
        leading space because most rare GPT-2 tokens start a word."""
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64) if not isinstance(ids, Tensor) else ids).long()
        if ids.ndim != 1:
            raise ValueError(f"decode takes one 1-D sequence, got shape {tuple(ids.shape)}; use decode_batch")
        tok, parts, run = gpt2_tokenizer(), [], []
        for i in ids.tolist():
            if i < self.size:
                run.append(self.gpt2_ids[i])
                continue
            if i > self.mask_id or i < 0:
                raise ValueError(f"compact id {i} outside [0, {self.mask_id}]")
            if run:
                parts.append(tok.decode(run, clean_up_tokenization_spaces=False))
                run = []
            parts.append(unk if i == self.unk_id else mask)
        if run:
            parts.append(tok.decode(run, clean_up_tokenization_spaces=False))
        return "".join(parts)

    def decode_batch(self, ids, **markers) -> list[str]:
        """(B, L) compact ids -> B texts (see :meth:`decode`)."""
        return [self.decode(row, **markers) for row in ids]

    # construction and storage
    @classmethod
    def from_counts(cls, counts, size: int = DEFAULT_VOCAB_SIZE) -> CompactVocab:
        """The ``size`` most frequent GPT-2 tokens of ``counts`` (int (50257,)); fewer when fewer occur."""
        counts = np.asarray(counts)
        if counts.shape != (GPT2_VOCAB_SIZE,):
            raise ValueError(f"counts must have shape ({GPT2_VOCAB_SIZE},), got {counts.shape}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        order = np.argsort(-counts, kind="stable")[:size]
        return cls(order[counts[order] > 0])

    @classmethod
    def from_texts(cls, texts: Iterable[str], size: int = DEFAULT_VOCAB_SIZE) -> CompactVocab:
        """Built from the GPT-2 tokens of ``texts`` (e.g. a few hundred reviews, for tests)."""
        lists = tokenize(list(texts))
        if not lists:
            raise ValueError("CompactVocab.from_texts needs at least one text")
        return cls.from_counts(np.bincount(np.concatenate(lists), minlength=GPT2_VOCAB_SIZE), size)

    def save(self, path: str | Path) -> None:
        """JSON ``{"format": "sepo_ray.compact_vocab", "version": 1, "gpt2_ids": [...]}``, written atomically."""
        data = {"format": "sepo_ray.compact_vocab", "version": 1, "gpt2_ids": list(self.gpt2_ids)}
        _atomic_write(Path(path), json.dumps(data).encode())

    @classmethod
    def load(cls, path: str | Path) -> CompactVocab:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != "sepo_ray.compact_vocab":
            raise ValueError(f"{path} is not a sepo_ray compact vocabulary")
        return cls(data["gpt2_ids"])


@lru_cache(maxsize=4)
def compact_vocab(size: int = DEFAULT_VOCAB_SIZE) -> CompactVocab:
    """The ``size`` most frequent GPT-2 tokens of the IMDB train split (+ UNK + MASK), cached as
    ``<cache>/text/compact_vocab_<size>_v<version>_<csv sha>.json``."""
    path = cache_dir("text") / f"compact_vocab_{size}_v{_CACHE_VERSION}_{REVIEWS_SHA256[:12]}.json"
    if path.is_file():
        return CompactVocab.load(path)
    vocab = CompactVocab.from_counts(token_counts("train"), size)
    vocab.save(path)
    return vocab


def chunk_sequences(
    token_lists: Iterable[np.ndarray],
    length: int,
    vocab: CompactVocab,
    max_chunks_per_review: int | None = None,
) -> Tensor:
    """LongTensor (M, length) of compact ids: each review's GPT-2 ids cut into consecutive, non-overlapping
    chunks of ``length`` starting at the review's first token (so review openings, where prompts come from, are
    in the data); the trailing partial chunk is dropped (there is no padding token). At most
    ``max_chunks_per_review`` chunks per review (None: all)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    kept = []
    for ids in token_lists:
        n = len(ids) // length
        if max_chunks_per_review is not None:
            n = min(n, max_chunks_per_review)
        if n:
            kept.append(np.asarray(ids[: n * length], dtype=np.int64))
    if not kept:
        return torch.empty((0, length), dtype=torch.long)
    return vocab.from_gpt2(np.concatenate(kept)).view(-1, length)  # (M, length)


def training_sequences(
    length: int,
    split: str = "train",
    vocab: CompactVocab | None = None,
    max_chunks_per_review: int | None = None,
) -> Tensor:
    """LongTensor (M, length): :func:`chunk_sequences` of every review of ``split`` in the compact vocabulary
    (default :func:`compact_vocab`), for pretraining the generator. The first call tokenises all reviews."""
    return chunk_sequences(split_token_lists(split), length, vocab or compact_vocab(), max_chunks_per_review)
