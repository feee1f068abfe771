"""The text task's data, one import point: GPT-2 BPE, the IMDB reviews and their hashed split into train,
validation and test (:mod:`.corpus`), the compact vocabulary and the training sequences (:mod:`.vocab`), the
review prompts (:mod:`.prompting`).

Sources, licences and the cache are described in :mod:`.corpus`. Everything below is re-exported unchanged
(same objects: ``data.compact_vocab.cache_clear()`` clears the one cache).
"""

from __future__ import annotations

from .corpus import (
    CACHE_ENV,
    GPT2_EOS_ID,
    GPT2_FILES,
    GPT2_VOCAB_SIZE,
    HELDOUT_FRACTION,
    IMDB_NUM_REVIEWS,
    REVIEWS_CSV,
    REVIEWS_INSTALL_HINT,
    REVIEWS_SHA256,
    SPLITS,
    TOKENIZER_INSTALL_HINT,
    VALIDATION_SHARE,
    cache_dir,
    clean_review,
    gpt2_tokenizer,
    heldout_part,
    imdb_reviews,
    imdb_split,
    package_data_file,
    part_of,
    review_tokens,
    sha256_bytes,
    split_of,
    split_token_lists,
    token_counts,
    tokenize,
)
from .prompting import prompted_reviews, prompts
from .vocab import DEFAULT_VOCAB_SIZE, CompactVocab, chunk_sequences, compact_vocab, training_sequences

__all__ = [
    "CACHE_ENV",
    "DEFAULT_VOCAB_SIZE",
    "GPT2_EOS_ID",
    "GPT2_FILES",
    "GPT2_VOCAB_SIZE",
    "HELDOUT_FRACTION",
    "IMDB_NUM_REVIEWS",
    "REVIEWS_CSV",
    "REVIEWS_INSTALL_HINT",
    "REVIEWS_SHA256",
    "SPLITS",
    "TOKENIZER_INSTALL_HINT",
    "VALIDATION_SHARE",
    "CompactVocab",
    "cache_dir",
    "chunk_sequences",
    "clean_review",
    "compact_vocab",
    "gpt2_tokenizer",
    "heldout_part",
    "imdb_reviews",
    "imdb_split",
    "package_data_file",
    "part_of",
    "prompted_reviews",
    "prompts",
    "review_tokens",
    "sha256_bytes",
    "split_of",
    "split_token_lists",
    "token_counts",
    "tokenize",
    "training_sequences",
]
