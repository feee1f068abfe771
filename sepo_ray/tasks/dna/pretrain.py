"""Train the DNA task's shipped models: ``python -m sepo_ray.pretrain dna [--only NAME] [--output DIR]``.

Seven models, each written as ``NAME.safetensors`` + ``NAME.json`` (a card: data SHA-256, config, training time,
held-out figures) in ``--output`` (default ``pretrained/dna`` under the current directory; the shipped
artifacts in the package are never written over):

- ``generator``: the MDLM denoiser (:class:`~sepo_ray.tasks.dna.models.DNAConvDenoiser`), trained with the continuous-time
  MDLM loss on all 47,872 DHS sequences (as DRAKES pretrains on all of its data), random reverse complements;
- ``generator_v2``: the same recipe on the training chromosomes only (no validation or test row), the generator
  of the evaluation protocol;
- ``ft_oracle``: 4-way cell-type :class:`~sepo_ray.tasks.dna.classifiers.DilatedCNNClassifier` on chromosome half A;
- ``eval_oracle``: 4-way cell-type :class:`~sepo_ray.tasks.dna.classifiers.KmerMLPClassifier` on chromosome half B
  (a different model family, App. E.2 uses two oracles on disjoint chromosome halves);
- ``accessibility``: binary :class:`~sepo_ray.tasks.dna.classifiers.DilatedCNNClassifier`, real DHS vs. dinucleotide-shuffled
  DHS (fresh shuffles each epoch), on all training chromosomes (ATAC-Acc, evaluation only);
- ``ft_accessibility``: the same task for a :class:`~sepo_ray.tasks.dna.classifiers.KmerMLPClassifier` on chromosome
  half A — the accessibility guard that a fine-tuning reward may use (never the evaluation classifier);
- ``atac_v2``: the ``accessibility`` recipe on chromosome half B only — the protocol's ATAC classifier, disjoint from
  the guard in rows and in model family.

Oracles keep the epoch with the best validation (chr2) AUROC and report the test (chr1) figures.
Runs are seeded and deterministic for a given seed and thread count (``--threads``, default 1).

This module holds the configs (:data:`CONFIGS`) and the command line; the training lives in
:mod:`.generator_training` (on :func:`sepo_ray.tasks.pretrain.pretrain_denoiser`) and :mod:`.oracle_training`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from sepo_ray.tasks.pretrain import check_output_folder

from .data import load_dhs
from .generator_training import GeneratorConfig, continuous_nelbo_bits, train_generator
from .oracle_training import (
    ClassifierConfig,
    evaluate_classifier,
    hepg2_log_odds,
    oracle_agreement,
    predict_logits,
    train_classifier,
)

GENERATORS = ("generator", "generator_v2")
MODEL_NAMES = (*GENERATORS, "ft_oracle", "eval_oracle", "accessibility", "ft_accessibility", "atac_v2")


CONFIGS: dict[str, GeneratorConfig | ClassifierConfig] = {
    "generator": GeneratorConfig(),
    # the clean generator of the evaluation protocol: the same recipe on the training chromosomes only, so that the
    # test rows behind 3-mer correlation and likelihood (and the validation rows behind selection) are unseen
    "generator_v2": GeneratorConfig(train_split="train_all"),
    "ft_oracle": ClassifierConfig(
        model="cnn",
        model_kwargs={"num_classes": 4, "hidden_dim": 64, "dilations": [1, 2, 4, 8], "dropout": 0.1},
        train_split="half_a",
        epochs=5,
        lr=2e-3,
        seed=1,
    ),
    "eval_oracle": ClassifierConfig(
        model="kmer",
        model_kwargs={"num_classes": 4, "ks": [1, 2, 3, 4, 5, 6], "hidden_dim": 256, "dropout": 0.3},
        train_split="half_b",
        epochs=3,
        lr=1e-3,
        seed=2,
    ),
    "accessibility": ClassifierConfig(
        model="cnn",
        model_kwargs={"num_classes": 1, "hidden_dim": 64, "dilations": [1, 2, 4, 8], "dropout": 0.1},
        train_split="train_all",
        epochs=2,
        lr=2e-3,
        task="accessibility",
        seed=3,
    ),
    # the accessibility guard of the fine-tuning reward: another model family, chromosome half A only, so that
    # a policy that fools it does not thereby fool the evaluation classifier above
    "ft_accessibility": ClassifierConfig(
        model="kmer",
        model_kwargs={"num_classes": 1, "ks": [1, 2, 3, 4, 5, 6], "hidden_dim": 256, "dropout": 0.3},
        train_split="half_a",
        epochs=3,
        lr=1e-3,
        task="accessibility",
        seed=4,
    ),
}
# the evaluation's ATAC classifier of the protocol: chromosome half B only and the CNN family, disjoint in both from
# the guard above (k-mer MLP, half A), so that a policy steered by the guard is judged by a model that shares neither
# its rows nor its inductive bias
CONFIGS["atac_v2"] = replace(CONFIGS["accessibility"], train_split="half_b", seed=5)


DEFAULT_OUTPUT = Path("pretrained") / "dna"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sepo-ray pretrain dna", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", choices=MODEL_NAMES, action="append", help="train only this model (repeatable)"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"output directory (default {DEFAULT_OUTPUT})"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: fastest on a busy machine)"
    )
    parser.add_argument("--seed", type=int, default=None, help="override every model's seed")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that holds model files")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    out_dir = check_output_folder(args.output, args.overwrite)  # never the shipped artifacts
    torch.set_num_threads(args.threads)
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    data = load_dhs()
    log(f"DHS table {data.path} ({len(data)} rows, sha256 {data.sha256[:12]}...) -> {out_dir}")
    for name in args.only or MODEL_NAMES:
        cfg = CONFIGS[name]
        if args.seed is not None:
            cfg = type(cfg)(**{**asdict(cfg), "seed": args.seed})
        if name in GENERATORS:
            train_generator(data, cfg, out_dir, args.threads, log, name=name)
        else:
            train_classifier(data, name, cfg, out_dir, args.threads, log)
    return 0


__all__ = [
    "CONFIGS",
    "GENERATORS",
    "DEFAULT_OUTPUT",
    "MODEL_NAMES",
    "ClassifierConfig",
    "GeneratorConfig",
    "continuous_nelbo_bits",
    "evaluate_classifier",
    "hepg2_log_odds",
    "main",
    "oracle_agreement",
    "predict_logits",
    "train_classifier",
    "train_generator",
]

if __name__ == "__main__":
    sys.exit(main())
