"""DNA sequence tokens: encoding, validation, reverse complement, k-mer counts, dinucleotide shuffle.

Vocabulary A=0, C=1, G=2, T=3 (``NUM_TOKENS`` = 4) and MASK = 4, as in the denoiser protocol.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

ALPHABET = "ACGT"
NUM_TOKENS = 4
MASK_ID = NUM_TOKENS
SEQ_LEN = 200

_LUT = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(ALPHABET):
    _LUT[ord(_c)] = _i


def validate_sequences(sequences: Sequence[str] | Tensor | np.ndarray, length: int | None = SEQ_LEN) -> None:
    """Raise ValueError naming the first offending sequence (index, and character or length).

    Strings must be upper-case ACGT only; token arrays must be integer (N, L) with values in 0..3.
    ``length=None`` skips the length check.
    """
    if isinstance(sequences, (Tensor, np.ndarray)):
        x = sequences
        if x.ndim != 2:
            raise ValueError(f"sequences: token array must have shape (N, L), got {tuple(x.shape)}")
        if length is not None and x.shape[1] != length:
            raise ValueError(f"sequences: token array has length {x.shape[1]}, expected {length}")
        if isinstance(x, Tensor):
            if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
                raise ValueError(f"sequences: token tensor must be an integer tensor, got dtype {x.dtype}")
            bad = ((x < 0) | (x >= NUM_TOKENS)).nonzero()
            if bad.numel():
                i, j = (int(v) for v in bad[0])
                raise ValueError(
                    f"sequences[{i}]: token {int(x[i, j])} at position {j} is not in 0..{NUM_TOKENS - 1} (ACGT)"
                )
        else:
            if not np.issubdtype(x.dtype, np.integer):
                raise ValueError(f"sequences: token array must be integer, got dtype {x.dtype}")
            bad = np.argwhere((x < 0) | (x >= NUM_TOKENS))
            if len(bad):
                i, j = (int(v) for v in bad[0])
                raise ValueError(
                    f"sequences[{i}]: token {int(x[i, j])} at position {j} is not in 0..{NUM_TOKENS - 1} (ACGT)"
                )
        return
    if isinstance(sequences, str):
        raise ValueError("sequences: expected a list of strings, got a single str")
    for i, s in enumerate(sequences):
        if not isinstance(s, str):
            raise ValueError(f"sequences[{i}]: expected str, got {type(s).__name__}")
        if length is not None and len(s) != length:
            raise ValueError(f"sequences[{i}]: length {len(s)}, expected {length}")
        codes = np.frombuffer(s.encode("latin-1", errors="replace"), dtype=np.uint8)
        bad = np.flatnonzero(_LUT[codes] < 0)
        if len(bad):
            j = int(bad[0])
            raise ValueError(
                f"sequences[{i}]: invalid character {s[j]!r} at position {j} (allowed: A, C, G, T)"
            )


def encode(sequences: Sequence[str], length: int | None = SEQ_LEN) -> Tensor:
    """Strings -> LongTensor (N, L) of tokens 0..3; validates first (ValueError names the culprit)."""
    validate_sequences(sequences, length)
    if len(sequences) == 0:
        return torch.zeros(0, length or 0, dtype=torch.long)
    buf = np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)
    return torch.from_numpy(_LUT[buf].reshape(len(sequences), -1))  # (N, L)


def decode(x: Tensor | np.ndarray) -> list[str]:
    """LongTensor (N, L) of tokens 0..3 -> list of N strings (MASK would be written as 'N')."""
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"x must have shape (N, L), got {arr.shape}")
    chars = np.frombuffer(b"ACGTN", dtype=np.uint8)[np.clip(arr, 0, 4)]  # (N, L)
    return [row.tobytes().decode("ascii") for row in chars]


def as_tokens(sequences: Sequence[str] | Tensor | np.ndarray, length: int | None = SEQ_LEN) -> Tensor:
    """Strings or integer tokens -> validated LongTensor (N, L) on CPU (or on the input tensor's device)."""
    if isinstance(sequences, Tensor):
        validate_sequences(sequences, length)
        return sequences.long()
    if isinstance(sequences, np.ndarray) and sequences.dtype.kind in "iu":
        validate_sequences(sequences, length)
        return torch.from_numpy(sequences.astype(np.int64))
    return encode(list(sequences), length)


def reverse_complement(x: Tensor) -> Tensor:
    """Reverse complement of tokens (..., L): A<->T, C<->G is 3 - token; then flip the last axis."""
    return (NUM_TOKENS - 1 - x).flip(-1)


def random_reverse_complement(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Each row replaced by its reverse complement w.p. 1/2 (one uniform per row from ``generator``): a
    training augmentation (both strands of a DHS are the same element). x (B, L) -> (B, L)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5  # (B,)
    return torch.where(flip[:, None], reverse_complement(x), x)  # (B, L)


def kmer_counts(x: Tensor | np.ndarray, k: int) -> np.ndarray:
    """Counts of every k-mer per sequence: tokens (N, L) -> int64 (N, 4**k), k-mer index in base 4 (A=0)."""
    arr = x.cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    n, length = arr.shape
    if not 1 <= k <= length:
        raise ValueError(f"k must lie in 1..{length}, got {k}")
    code = np.zeros((n, length - k + 1), dtype=np.int64)
    for j in range(k):
        code = code * NUM_TOKENS + arr[:, j : length - k + 1 + j]
    offsets = (np.arange(n, dtype=np.int64) * NUM_TOKENS**k)[:, None]
    return np.bincount((code + offsets).ravel(), minlength=n * NUM_TOKENS**k).reshape(n, NUM_TOKENS**k)


def kmer_frequencies(x: Tensor | np.ndarray, k: int) -> np.ndarray:
    """Pooled k-mer frequency vector of a set of sequences: tokens (N, L) -> float64 (4**k,), sums to 1."""
    counts = kmer_counts(x, k).sum(0).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def dinucleotide_shuffle(x: np.ndarray | Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Uniformly random sequence with exactly the same dinucleotide counts (and first/last base) as ``x``.

    Altschul & Erickson (1985) via the Eulerian-path construction of Kandel et al. (1996): the sequence is an
    Eulerian path in the multigraph on {A,C,G,T} whose edges are its L-1 dinucleotides. Pick for every vertex but
    the last base a random "last exit" edge such that these edges form a tree rooted at the last base (Wilson's
    loop-erased random walks), shuffle every vertex's remaining exits, put the last exit last, and walk
    from the first base. Every Eulerian path with the same counts is equally likely. x: (L,) ints 0..3 -> (L,).
    """
    seq = np.asarray(x, dtype=np.int64)
    length = len(seq)
    if length < 3:
        return seq.copy()
    first, last = int(seq[0]), int(seq[-1])
    exits: list[list[int]] = [[] for _ in range(NUM_TOKENS)]
    for a, b in zip(seq[:-1].tolist(), seq[1:].tolist()):
        exits[a].append(b)
    present = {int(v) for v in seq}
    # Uniform random arborescence towards `last` (Wilson's loop-erased random walks along exit edges, each edge
    # chosen with its multiplicity): for each vertex v != last, last_exit[v] is the exit edge used last from v.
    last_exit: dict[int, int] = {}
    in_tree = {last}
    for v in sorted(present - {last}):
        # loop-erased random walk from v along uniformly chosen exit edges until the tree is hit (Wilson).
        nxt: dict[int, int] = {}
        u = v
        while u not in in_tree:
            nxt[u] = exits[u][rng.integers(len(exits[u]))]
            u = nxt[u]
        u = v
        while u not in in_tree:
            last_exit[u] = nxt[u]
            in_tree.add(u)
            u = nxt[u]
    order: list[list[int]] = []
    for v in range(NUM_TOKENS):
        rest = list(exits[v])
        if v in last_exit:
            rest.remove(last_exit[v])
        rest = [rest[i] for i in rng.permutation(len(rest))]
        if v in last_exit:
            rest.append(last_exit[v])
        order.append(rest)
    out = np.empty(length, dtype=np.int64)
    out[0] = first
    pos = [0] * NUM_TOKENS
    for i in range(1, length):
        u = int(out[i - 1])
        out[i] = order[u][pos[u]]
        pos[u] += 1
    return out


def dinucleotide_shuffle_batch(x: Tensor | np.ndarray, rng: np.random.Generator) -> Tensor:
    """Row-wise :func:`dinucleotide_shuffle`: tokens (N, L) -> LongTensor (N, L)."""
    arr = x.cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    return torch.from_numpy(np.stack([dinucleotide_shuffle(row, rng) for row in arr]) if len(arr) else arr)
