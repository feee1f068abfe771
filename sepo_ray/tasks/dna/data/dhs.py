"""The embedded DNA data set: 47,872 cell-type-specific ENCODE DHS sequences (200 bp, hg38).

Source: ``dnadiffusion/data/K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt`` inside the
``dnadiffusion==0.0.0.dev0`` wheel (install it with ``pip install --no-deps dnadiffusion==0.0.0.dev0``; its code is
never imported). The file is pinned by its SHA-256 (:data:`DHS_SHA256`).

Columns used: ``chr``, ``sequence`` (200 bp around the DHS summit, upper-case ACGT only), ``TAG`` (the cell type the
DHS is specific to: 11,968 each of GM12878, hESCT0, K562, HepG2; it coincides with the one-hot peak flags
``GM12878_ENCLB441ZZZ`` ... ``HepG2_ENCLB029COU``) and ``data_label``.

Splits (disjoint, by chromosome):

- ``test`` = chr1 (4,565 sequences) and ``validation`` = chr2 (4,053), exactly as the file's ``data_label`` column
  says. (The README shipped next to the file says the reverse, "validation (chr1), test (chr2)"; the column is
  authoritative here.) Oracles select their epoch on ``validation`` and report on ``test``.
- ``half_a`` (fine-tuning oracle): odd autosomes chr3, chr5, ..., chr21 and chrX (20,353 sequences);
  ``half_b`` (evaluation oracle): even autosomes chr4, chr6, ..., chr22 and chrY (18,901 sequences).
  Both halves exclude chr1 and chr2, so both oracles are evaluated on chromosomes neither has seen
  (paper App. E.2: "two disjoint subsets, each covering half of the chromosomes").
- The generator is pretrained on all 47,872 sequences, as the DRAKES generator is on all of Gosai et al.

Labels: ``cell_type`` in 0..3 in the order of :data:`CELL_TYPES`; HepG2 = :data:`HEPG2`. The reward is the HepG2
log-odds of a 4-way classifier, log p(HepG2 | x) - log(1 - p(HepG2 | x)) (see ``sepo_ray.oracles``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .sequences import SEQ_LEN, encode

DHS_FILENAME = "K562_hESCT0_HepG2_GM12878_12k_sequences_per_group.txt"
DHS_SHA256 = "ba1063a9a3d0054020ae2e9f8add974550ae91fe2d21989e790e5d6cb2cb4d58"
DHS_NUM_SEQUENCES = 47_872
#: Environment variable that may point at a copy of the table (e.g. extracted from the wheel by hand).
DHS_PATH_ENV = "SEPO_RAY_DHS_TABLE"
INSTALL_HINT = "pip install --no-deps dnadiffusion==0.0.0.dev0"

CELL_TYPES = ("GM12878", "hESCT0", "K562", "HepG2")
HEPG2 = CELL_TYPES.index("HepG2")
_TAGS = {
    "GM12878_ENCLB441ZZZ": 0,
    "hESCT0_ENCLB449ZZZ": 1,
    "K562_ENCLB843GMH": 2,
    "HepG2_ENCLB029COU": 3,
}

TEST_CHROMS = ("chr1",)
VALIDATION_CHROMS = ("chr2",)
HALF_A_CHROMS = tuple(f"chr{i}" for i in range(3, 23, 2)) + ("chrX",)
HALF_B_CHROMS = tuple(f"chr{i}" for i in range(4, 23, 2)) + ("chrY",)
SPLITS = {
    "half_a": HALF_A_CHROMS,
    "half_b": HALF_B_CHROMS,
    "validation": VALIDATION_CHROMS,
    "test": TEST_CHROMS,
}


def dhs_table_path() -> Path:
    """Locate the DHS table: ``$SEPO_RAY_DHS_TABLE`` if set, else inside the installed ``dnadiffusion`` wheel.

    Raises FileNotFoundError with the command that fixes it.
    """
    env = os.environ.get(DHS_PATH_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise FileNotFoundError(f"${DHS_PATH_ENV}={env} is not a file")
        return path
    try:
        files = importlib.metadata.files("dnadiffusion") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).endswith(f"data/{DHS_FILENAME}"):
            path = Path(f.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"The DNA data table {DHS_FILENAME} was not found. It ships inside the dnadiffusion wheel; install it "
        f"without its (outdated) dependencies:\n    {INSTALL_HINT}\n"
        f"or point ${DHS_PATH_ENV} at a copy of the file."
    )


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class DHSData:
    """The DHS table in memory. N = 47,872 rows in file order.

    sequences: list of N strings (200 bp); tokens: LongTensor (N, 200) in 0..3; chrom: str array (N,);
    cell_type: int64 array (N,) in 0..3 (:data:`CELL_TYPES`); data_label: str array (N,) of
    training / validation / test; sha256: the file's hash.
    """

    sequences: list[str]
    tokens: Tensor
    chrom: np.ndarray
    cell_type: np.ndarray
    data_label: np.ndarray
    sha256: str
    path: str
    _split_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def is_hepg2(self) -> np.ndarray:
        """bool (N,): the DHS is HepG2-specific."""
        return self.cell_type == HEPG2

    def split(self, name: str) -> np.ndarray:
        """Row indices (int64) of a split: one of ``half_a``, ``half_b``, ``validation``, ``test`` (sorted),
        ``train_all`` (half A then half B: every chromosome but the validation and test ones), ``all``."""
        if name == "all":
            return np.arange(len(self))
        if name == "train_all":
            return np.concatenate([self.split("half_a"), self.split("half_b")])  # this order, as trained
        if name not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS) + ['train_all', 'all']}, got {name!r}")
        if name not in self._split_cache:
            self._split_cache[name] = np.flatnonzero(np.isin(self.chrom, SPLITS[name]))
        return self._split_cache[name]


@lru_cache(maxsize=1)
def load_dhs(verify: bool = True) -> DHSData:
    """Read (and by default SHA-256-check) the DHS table; cached per process (about 2 s)."""
    import pandas as pd

    path = dhs_table_path()
    digest = sha256_file(path) if verify else ""
    if verify and digest != DHS_SHA256:
        raise ValueError(
            f"{path} has SHA-256 {digest}, expected {DHS_SHA256}; reinstall the data with\n"
            f"    pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}"
        )
    df = pd.read_csv(path, sep="\t", usecols=["chr", "sequence", "TAG", "data_label"])
    if len(df) != DHS_NUM_SEQUENCES:
        raise ValueError(f"{path}: expected {DHS_NUM_SEQUENCES} rows, found {len(df)}")
    sequences = [str(s) for s in df["sequence"]]
    tokens = encode(sequences, SEQ_LEN)
    cell_type = df["TAG"].map(_TAGS).to_numpy()
    if np.isnan(cell_type.astype(np.float64)).any():
        raise ValueError(f"{path}: unknown TAG values {sorted(set(df['TAG']) - set(_TAGS))}")
    return DHSData(
        sequences=sequences,
        tokens=tokens,
        chrom=df["chr"].to_numpy(dtype=str),
        cell_type=cell_type.astype(np.int64),
        data_label=df["data_label"].to_numpy(dtype=str),
        sha256=digest or DHS_SHA256,
        path=str(path),
    )


def split_tensors(data: DHSData, name: str) -> tuple[Tensor, Tensor]:
    """(tokens (n, 200) long, cell_type (n,) long) of one split."""
    idx = data.split(name)
    return data.tokens[idx], torch.from_numpy(data.cell_type[idx])
