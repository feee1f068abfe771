"""DNA benchmark evaluation (paper Table 2 and Fig. 2): metrics over seeds, a violin plot, the samples.

    python -m sepo_ray.evaluate dna --model pretrained --num-samples 640 --seeds 0,1,2 --output DIR [--steps T]

Rows: each ``--model`` (``pretrained``, a generator ``.safetensors`` file, or a directory holding one; repeat the
flag or separate with commas) sampled with the T-step sampler once per seed, plus two references drawn from the
real DHS of the test chromosome (chr1) once per seed without replacement: ``real_hepg2_test`` (HepG2-specific)
and ``real_nonhepg2_test`` (the other three cell types).

Writes to DIR:

- ``metrics.json``: {row: {metric: {"mean": float, "std": float}}}, mean and sample standard deviation (ddof=1;
  0 for one seed) over seeds of pred_activity_median, atac_acc, kmer3_corr, log_lik_median, motif_enrichment
  (definitions in :mod:`sepo_ray.metrics`);
- ``table.md``: the same as a Markdown table, "mean (std)";
- ``pred_activity.png``: violin plot of the per-sequence Pred-Activity of every row, all seeds pooled;
- ``samples.parquet``: one line per sequence: row, seed, sequence, pred_activity, atac, motif_count, log_lik;
- ``run.json``: arguments, wall and CPU time.

Cost: one generator forward per sampling step and per ELBO step, i.e. 3 x 640 x (T + E) + 2 x 3 x 640 x E
forwards for the default rows (T = 32, E = 4: 84k forwards of the shipped generator, about 5-6 minutes on two
idle CPU cores).

:func:`evaluate_rows` is the library entry point: rows given as generators, fixed sequence lists, per-seed
sequence lists or callables, so other front ends (e.g. comparing many fine-tuned checkpoints) reuse it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .metrics import ELBO_STEPS, METRIC_KEYS, DNAScorer, summarize

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_STEPS = 32
REFERENCE_ROWS = ("real_hepg2_test", "real_nonhepg2_test")
METRIC_LABELS = {
    "pred_activity_median": "Pred-Activity (median) ↑",
    "atac_acc": "ATAC-Acc (%) ↑",
    "kmer3_corr": "3-mer Corr ↑",
    "log_lik_median": "Log-Lik (median) ↑",
    "motif_enrichment": "Motif enrichment (log2) ↑",
}

RowSpec = nn.Module | Sequence[str] | Mapping[int, Sequence[str]] | Callable[[int], Sequence[str]]


def load_generator(path_or_name: str | Path = "pretrained", device: str | torch.device = "cpu") -> nn.Module:
    """The generator behind an evaluation row: ``"pretrained"``, a ``.safetensors`` file, or a directory with one.

    Delegates to :func:`sepo_ray.models.load_denoiser`; front ends that store generators differently (e.g. an
    RLlib checkpoint directory) extend this function.
    """
    from .models import load_denoiser

    return load_denoiser(path_or_name, device=device)


def sample_sequences(
    model: nn.Module,
    num_samples: int,
    seed: int,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 320,
    length: int = 200,
    progress: Callable[[int, int], None] | bool = False,
) -> list[str]:
    """``num_samples`` sequences from the T-step sampler, seeded. -> list of strings over ACGT."""
    from .data import decode
    from .diffusion import sample

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    out = sample(model, num_samples, length, steps, generator=gen, batch_size=batch_size, progress=progress)
    return decode(out.x)


def reference_sequences(name: str, num_samples: int, seed: int) -> list[str]:
    """Real test-chromosome DHS for a reference row, ``num_samples`` drawn without replacement (seeded).

    ``real_hepg2_test``: HepG2-specific rows of chr1 (958); ``real_nonhepg2_test``: the others (3,607).
    """
    from .data import HEPG2, load_dhs

    data = load_dhs()
    test = data.split("test")
    if name == "real_hepg2_test":
        rows = test[data.cell_type[test] == HEPG2]
    elif name == "real_nonhepg2_test":
        rows = test[data.cell_type[test] != HEPG2]
    else:
        raise ValueError(f"name must be one of {REFERENCE_ROWS}, got {name!r}")
    if num_samples > len(rows):
        raise ValueError(f"num_samples: {name} has only {len(rows)} sequences, asked for {num_samples}")
    pick = np.random.default_rng(int(seed)).choice(rows, size=num_samples, replace=False)
    return [data.sequences[i] for i in pick]


def _row_sequences(
    spec: RowSpec, seed: int, num_samples: int, steps: int, batch_size: int, progress
) -> list[str]:
    if isinstance(spec, nn.Module):
        return sample_sequences(spec, num_samples, seed, steps, batch_size=batch_size, progress=progress)
    if isinstance(spec, Mapping):
        return list(spec[seed])
    if callable(spec):
        return list(spec(seed))
    return list(spec)


def evaluate_rows(
    rows: Mapping[str, RowSpec],
    seeds: Sequence[int] = (0, 1, 2),
    num_samples: int = 640,
    steps: int = DEFAULT_STEPS,
    scorer: DNAScorer | None = None,
    progress: bool = True,
    batch_size: int = 320,
) -> tuple[dict, pd.DataFrame]:
    """Metrics of every row over seeds, and all sequences with their scores.

    rows: name -> a generator (sampled ``num_samples`` per seed with ``steps`` steps), a list of sequences (the
    same for every seed), a {seed: sequences} mapping, or a callable ``seed -> sequences``.
    batch_size: sequences per sampler batch.
    Returns (metrics {row: {metric: {"mean", "std"}}}, DataFrame with columns row, seed, sequence + SCORE_KEYS).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if not rows:
        raise ValueError("rows must name at least one row")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    scorer = scorer or DNAScorer()
    calls_per_sample = -(-num_samples // batch_size)  # sampler batches per row and seed
    outer = tqdm(total=len(rows) * len(seeds), desc="evaluate", unit="set", disable=not progress)
    per_row: dict[str, list[dict]] = {}
    frames = []
    for name, spec in rows.items():
        per_row[name] = []
        for seed in seeds:
            outer.set_postfix_str(f"{name} seed {seed}")
            inner = tqdm(
                total=steps * calls_per_sample,
                desc=f"sampling {name} seed {seed}",
                unit="step",
                leave=False,
                position=1,
                disable=not progress or not isinstance(spec, nn.Module),
            )

            def tick(done: int, total: int, inner=inner) -> None:
                inner.update(done - inner.n)

            seqs = _row_sequences(spec, seed, num_samples, steps, batch_size, tick)
            inner.close()
            # oracles, motif scan, ELBO under the pretrained generator
            scores = scorer.scores(seqs, seed=seed)
            per_row[name].append(summarize(scores, seqs))
            frames.append(pd.DataFrame({"row": name, "seed": seed, "sequence": seqs, **scores}))
            outer.update(1)
    outer.close()
    metrics = {
        name: {key: _mean_std([m[key] for m in runs]) for key in METRIC_KEYS}
        for name, runs in per_row.items()
    }
    return metrics, pd.concat(frames, ignore_index=True)


def _mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def format_table(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown table, one line per row, "mean (std)" per metric (paper Table 2 layout)."""
    header = "| row | " + " | ".join(METRIC_LABELS[k] for k in METRIC_KEYS) + " |"
    lines = [header, "|" + "---|" * (len(METRIC_KEYS) + 1)]
    for name, row in metrics.items():
        cells = []
        for key in METRIC_KEYS:
            digits = 1 if key in ("atac_acc", "log_lik_median") else 3
            cells.append(f"{row[key]['mean']:.{digits}f} ({row[key]['std']:.{digits}f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def violin_plot(samples: pd.DataFrame, path: str | Path, column: str = "pred_activity") -> Path:
    """Violin plot of a per-sequence score by row (paper Fig. 2), all seeds pooled; PNG via matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(samples["row"]))
    data = [samples.loc[samples["row"] == n, column].to_numpy() for n in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4.5))
    ax.violinplot(data, showmedians=True, showextrema=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
    ax.set_ylabel("Pred-Activity (eval-oracle HepG2 log-odds)" if column == "pred_activity" else column)
    ax.axhline(0.0, color="0.7", lw=0.8, ls="--")
    ax.set_title("Pred-Activity per sequence")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(
    output: str | Path, metrics: dict, samples: pd.DataFrame, run_info: dict | None = None
) -> Path:
    """metrics.json, table.md, pred_activity.png, samples.parquet (and run.json) in ``output``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "table.md").write_text(format_table(metrics))
    violin_plot(samples, out / "pred_activity.png")
    samples.to_parquet(out / "samples.parquet", index=False)
    if run_info is not None:
        (out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
    return out


def _split_list(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if (
        "--compare" in argv
    ):  # `evaluate dna --compare DIR [...]` = `python -m sepo_ray.compare dna --output DIR [...]`
        from .compare import main as compare_main

        i = argv.index("--compare")
        if i + 1 >= len(argv):
            print("error: --compare needs a directory", file=sys.stderr)
            return 2
        return compare_main(argv[:i] + ["--output", argv[i + 1]] + argv[i + 2 :])
    parser = argparse.ArgumentParser(prog="python -m sepo_ray.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["dna"])
    parser.add_argument(
        "--model",
        action="append",
        help="'pretrained' or a generator .safetensors path (repeatable, or comma-separated); default pretrained",
    )
    parser.add_argument("--num-samples", type=int, default=640, help="sequences per row and seed (640)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (0,1,2)")
    parser.add_argument("--output", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS, help=f"sampling steps T ({DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--elbo-steps", type=int, default=ELBO_STEPS, help=f"ELBO steps of log_lik ({ELBO_STEPS})"
    )
    parser.add_argument("--no-references", action="store_true", help="skip the real_*_test rows")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (1 is faster on a busy machine)"
    )
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds must name at least one seed")
    for flag, value in (
        ("--num-samples", args.num_samples),
        ("--steps", args.steps),
        ("--elbo-steps", args.elbo_steps),
    ):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0, c0 = time.perf_counter(), time.process_time()
    models = _split_list(args.model) or ["pretrained"]
    rows: dict[str, RowSpec] = {}
    for m in models:
        name = "pretrained" if m == "pretrained" else Path(m).stem if Path(m).is_file() else Path(m).name
        while name in rows or name in REFERENCE_ROWS:
            name += "_"
        rows[name] = load_generator(m, device=args.device)
    if not args.no_references:
        for ref in REFERENCE_ROWS:
            rows[ref] = lambda seed, ref=ref: reference_sequences(ref, args.num_samples, seed)
    scorer = DNAScorer(device=args.device, elbo_steps=args.elbo_steps)
    metrics, samples = evaluate_rows(rows, seeds, args.num_samples, args.steps, scorer)
    wall = time.perf_counter() - t0
    info = {
        "models": models,
        "num_samples": args.num_samples,
        "seeds": seeds,
        "steps": args.steps,
        "elbo_steps": args.elbo_steps,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "wall_s": round(wall, 1),
        "process_cpu_s": round(time.process_time() - c0, 1),
    }
    out = write_outputs(args.output, metrics, samples, info)
    print(format_table(metrics), end="")
    print(
        f"wrote {out}/metrics.json, table.md, pred_activity.png, samples.parquet in {wall:.0f}s", flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
