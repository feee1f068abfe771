"""The embedded DNA task: 200 bp regulatory DNA, HepG2 activity (DESIGN "The DNA task and its embedded default").

Everything DNA lives in this package: the ENCODE DHS table (``data``), the DRAKES-layout generator
(``models``), the oracles and the JASPAR motif scanner (``oracles``, ``motifs``), the Table-2 metrics
(``metrics``), pretraining (``pretrain``), example rewards (``rewards``) and the shipped ``artifacts/``.

    from sepo_ray.tasks import get_task

    task = get_task("dna")
    model = task.build_denoiser()                     # the shipped generator
    seqs = task.sample(model, 64, steps=32, seed=0)   # 64 strings over ACGT
    task.validation(seqs)                             # {"validation_score": ..., "validation_realism": ...}
    task.scorer().metrics(seqs)                       # pred_activity_median, atac_acc, kmer3_corr, ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sepo_ray.tasks.base import Task

from .data.sequences import ALPHABET, NUM_TOKENS, SEQ_LEN, encode


class DNATask(Task):
    """200 bp DNA over A, C, G, T; reward = the fine-tuning oracle's HepG2 log-odds (the default run adds the
    accessibility guard, ``dna_ft_accessible``).

    Validation (what any selection reads): ``validation_score`` = median fine-tuning-oracle HepG2 log-odds (the
    benchmark reward: no evaluation oracle), ``validation_realism`` = 3-mer frequency correlation with the real
    HepG2 DHS of the validation chromosome (chr2). The evaluation signals (Pred-Activity from the evaluation oracle,
    ATAC, 3-mer and likelihood against the test chromosome) are the scorer's, read only by the final report.
    """

    name = "dna"
    description = "200 bp regulatory DNA, HepG2 activity (embedded ENCODE DHS benchmark)"
    length = SEQ_LEN
    num_tokens = NUM_TOKENS
    alphabet = ALPHABET
    default_reward = "dna_ft"
    artifact_dir = Path(__file__).resolve().parent / "artifacts"

    # The default run: the trajectory objective, which under the protocol beats sepo_t and ties with SEPO at t -> 0
    # at 512 calls and alpha 1 while keeping 3-mer >= 0.9 (docs/results.md, Table 2 under the protocol). Its alpha and
    # lr are the choice of tune_configs/dna_default.yaml on the validation signal alone (tuning seed 1000; rounded to
    # two digits; docs/results/protocol/dna_default/sweep.json). The accessibility guard in its reward (log P(real
    # DHS) under the k-mer guard, never the ATAC classifier) and its weight were chosen before the protocol, by
    # reading ATAC; the validation signal measures no accessibility, so that weight stays a stated design choice.
    # The comparisons train on default_reward alone (the benchmark layer of sepo_ray.resolve).
    default_settings = {
        "objective": "trajectory",
        "kl_alpha": 0.25,
        "lr": 4.3e-4,
        "reward": "dna_ft_accessible",
    }
    default_iterations = 16  # 512 fine-tuning-oracle calls, about 4 minutes on 2 CPUs
    validation_realism_min = 0.85  # tuning keeps a trial whose validation 3-mer correlation stays DNA-like
    validation_signal = (
        "median fine-tuning-oracle HepG2 log-odds (dna_ft) of samples drawn with validation seeds, guarded by their "
        "3-mer correlation with the real HepG2 DHS of the validation chromosome chr2"
    )

    def __init__(self):
        self._ft_oracle = None

    def encode(self, sequences: Sequence[str]) -> Tensor:
        return encode(sequences, self.length)

    def build_denoiser(
        self, generator: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> nn.Module:
        from .models import load_denoiser

        return load_denoiser(generator, device=device)

    def generator_file(self, generator: str | Path | None = None) -> Path:
        from .models import denoiser_file

        return denoiser_file(generator)

    def validation(self, sequences: Sequence[str], prompts: Tensor | None = None) -> dict[str, float]:
        from .metrics import kmer3_corr, reference_stats
        from .oracles import FTOracle

        if self._ft_oracle is None:
            self._ft_oracle = FTOracle()
        return {
            "validation_score": float(np.median(self._ft_oracle(list(sequences)))),
            "validation_realism": float(kmer3_corr(list(sequences), reference_stats("validation")["kmer3"])),
        }

    def scorer(self, device: str | torch.device = "cpu", elbo_steps: int | None = None):
        from .metrics import ELBO_STEPS, default_scorer

        return default_scorer(str(device), int(elbo_steps or ELBO_STEPS))

    def reference_rows(self) -> dict[str, Callable[[int, int], list[str]]]:
        from .metrics import REFERENCE_ROWS, reference_sequences

        return {
            name: (lambda seed, n, name=name: reference_sequences(name, n, seed)) for name in REFERENCE_ROWS
        }

    # ``sepo-ray design dna``: its constraints, evidence columns, FASTA and motif plot (:mod:`.design`)
    def add_design_arguments(self, parser) -> None:
        from .design import add_design_arguments

        add_design_arguments(parser)

    def design_constraints(self, args) -> list:
        from .design import design_constraints

        return design_constraints(args)

    def design_column_help(self) -> dict[str, str]:
        from .design import column_help

        return column_help()

    def design_columns(self, sequences, seed=0, prompts=None, device="cpu") -> dict[str, np.ndarray]:
        from .design import design_columns

        return design_columns(sequences, seed, device)

    def write_designs(self, table, folder: Path) -> list[str]:
        from .design import write_fasta

        return write_fasta(table, folder)

    def design_plots(self, rows, folder: Path) -> list[tuple[str, str]]:
        from .design import motif_plot

        return motif_plot(rows, folder)

    def pretrain(self, argv: Sequence[str]) -> int:
        from .pretrain import main

        return main(list(argv))


__all__ = ["DNATask"]
