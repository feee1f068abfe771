"""The paper's Table 2 / Fig. 2 on the embedded DNA benchmark: SEPO against baselines at one oracle budget.

``python -m sepo_ray.compare dna --output DIR`` (also ``python -m sepo_ray.evaluate dna --compare DIR``)

1. fine-tunes each variant with ``python -m sepo_ray.run dna`` (same iterations, batch and seed, so the same
   number of fine-tuning-oracle calls), into ``DIR/runs/<variant>/`` (a finished run is reused, an unfinished
   one resumed);
2. evaluates every row over the seeds (3 x 640 samples by default) with the evaluation oracle, the
   accessibility classifier, 3-mer statistics, the pretrained ELBO and motif enrichment;
3. writes ``DIR/metrics.json``, ``DIR/table.md`` (Markdown), ``DIR/pred_activity.png`` (violins) and
   ``DIR/samples.parquet``.

Each evaluated row is kept in ``DIR/rows/`` with a fingerprint of what produced it (the generator file's
hash, seeds, sample count, T, ELBO draws, the oracle budget): a rerun, or one that adds a variant, evaluates
only the rows that changed, and an interrupted comparison loses at most the row it was on.

Rows: ``pretrained``; ``best_of_n`` (the pretrained model with the same oracle budget spent on selection: the
budget's C candidates form groups of N = group size, the fine-tuning oracle keeps the best of each group, so
the row holds C / N sequences per seed); ``sepo_grpo`` (the default SEPO GRPO); ``sepo_no_snis`` (pi_hat from
y's single parent, no SNIS); ``sepo_gradient_flow`` (one corrector step after each predictor step, Sec. 3.3);
``trajectory_grpo`` (the DDPO / d1-style policy gradient on the sampler's own per-step log-probabilities);
``trajectory_grpo_kl0.01`` (the same with alpha = 0.01: its loss is a mean over the T steps while SEPO's carries
the L/K position weight, so at SEPO's alpha the KL term outweighs its policy term by about two orders of
magnitude); and the real HepG2 / non-HepG2 test sequences as references.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from sepo_ray.models import denoiser_file
from sepo_ray.run import parse_overrides

VARIANTS: dict[str, list[str]] = {
    "sepo_grpo": [],
    "sepo_no_snis": ["snis_samples=0"],
    "sepo_gradient_flow": ["corrector_steps=1"],
    "trajectory_grpo": ["objective=trajectory"],
    "trajectory_grpo_kl0.01": ["objective=trajectory", "kl_alpha=0.01"],
}


def train_variants(
    out: Path, variants: list[str], iterations: int, seed: int, extra: list[str]
) -> dict[str, dict]:
    """Runs (or resumes, or reuses) each variant's fine-tuning; returns name -> result.json record."""
    from sepo_ray.run import main as run_main

    records = {}
    for name in variants:
        run_dir = out / "runs" / name
        result = run_dir / "result.json"
        record = json.loads(result.read_text()) if result.exists() else None
        wanted = parse_overrides(VARIANTS[name] + extra)
        if record is not None and (record.get("seed") != seed or record.get("overrides") != wanted):
            raise ValueError(
                f"{run_dir} was trained with seed {record.get('seed')} and overrides {record.get('overrides')}, "
                f"this comparison asks for seed {seed} and {wanted}: use another --output or remove that run"
            )
        done = record is not None and record["history"] and record["history"][-1]["iteration"] >= iterations
        if not done:
            args = [
                "dna",
                "--iterations",
                str(iterations),
                "--output",
                str(run_dir),
                "--seed",
                str(seed),
                "--no-eval",
            ]
            for item in VARIANTS[name] + extra:
                args += ["--set", item]
            if record is not None and record.get("checkpoints"):
                args.append("--resume")
            print(f"== fine-tuning {name}: python -m sepo_ray.run {' '.join(args)}", flush=True)
            rc = run_main(args)
            if rc != 0:
                raise RuntimeError(f"fine-tuning {name} failed (exit {rc}); see {run_dir}")
            record = json.loads(result.read_text())
        records[name] = record
    return records


def oracle_budget(record: dict) -> int:
    """Fine-tuning-oracle calls a run spent: iterations x sequences per iteration."""
    cfg = record["config"]
    return len(record["history"]) * int(cfg["prompts_per_batch"]) * int(cfg["group_size"])


def best_of_n_row(budget: int, group: int, steps: int):
    """Row callable: seed -> the best of each group of ``group`` pretrained samples (C = budget candidates)."""
    from sepo_ray.evaluate import load_generator, sample_sequences
    from sepo_ray.oracles import get_oracle

    model, oracle = load_generator("pretrained"), get_oracle("dna_ft")

    def row(seed: int) -> list[str]:
        candidates = sample_sequences(model, budget, 10_000 + seed, steps)
        scores = np.asarray(oracle(candidates)).reshape(-1, group)  # (C / N, N)
        best = scores.argmax(axis=1) + np.arange(scores.shape[0]) * group
        return [candidates[i] for i in best]

    return row


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def scoring_fingerprint() -> str:
    """Hash of every shipped DNA artifact (oracles, accessibility classifier, the ELBO's generator)."""
    h = hashlib.sha256()
    for path in sorted(denoiser_file("pretrained").parent.glob("*")):
        if path.is_file():
            h.update(path.name.encode() + _file_hash(path).encode())
    return h.hexdigest()[:16]


def row_fingerprint(name: str, source: dict, settings: dict) -> dict:
    """What a row's numbers depend on: its source (a generator file's hash, a budget, a reference set)
    and the evaluation settings. A cached row is reused only when this matches exactly."""
    return {"row": name, **source, **settings}


def load_cached_row(cache: Path, name: str, fingerprint: dict):
    """(metrics, samples) of a row evaluated before with the same fingerprint, or None."""
    import pandas as pd

    meta, table = cache / f"{name}.json", cache / f"{name}.parquet"
    if not (meta.is_file() and table.is_file()):
        return None
    saved = json.loads(meta.read_text())
    if saved.get("fingerprint") != fingerprint:
        return None
    return saved["metrics"], pd.read_parquet(table)


def save_cached_row(cache: Path, name: str, fingerprint: dict, metrics: dict, samples) -> None:
    """Write a row's metrics and samples (parquet first, then the JSON that makes the pair valid)."""
    cache.mkdir(parents=True, exist_ok=True)
    samples.to_parquet(cache / f"{name}.parquet", index=False)
    tmp = cache / f"{name}.json.tmp"
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "metrics": metrics}, indent=2) + "\n")
    os.replace(tmp, cache / f"{name}.json")


def row_plan(
    records: dict[str, dict], seeds: list[int], num_samples: int, steps: int, elbo_steps: int
) -> dict:
    """Every row of the table, in order: name -> (fingerprint, factory of its spec for ``evaluate_rows``)."""
    from sepo_ray.evaluate import REFERENCE_ROWS, load_generator, reference_sequences

    first = next(iter(records.values()))
    budget, group = oracle_budget(first), int(first["config"]["group_size"])
    settings = {
        "seeds": list(seeds),
        "num_samples": num_samples,
        "steps": steps,
        "elbo_steps": elbo_steps,
        "artifacts": scoring_fingerprint(),
    }
    pretrained_hash = _file_hash(denoiser_file("pretrained"))
    sources = {
        "pretrained": ({"generator": pretrained_hash}, lambda: load_generator("pretrained")),
        "best_of_n": (
            {"generator": pretrained_hash, "budget": budget, "group": group},
            lambda: best_of_n_row(budget, group, steps),
        ),
    }
    for name, record in records.items():
        source = denoiser_file(record["final_checkpoint"])
        sources[name] = ({"generator": _file_hash(source)}, lambda src=source: load_generator(str(src)))
    for ref in REFERENCE_ROWS:
        sources[ref] = (
            {"reference": ref},
            lambda ref=ref: lambda seed: reference_sequences(ref, num_samples, seed),
        )
    return {name: (row_fingerprint(name, src, settings), f) for name, (src, f) in sources.items()}


def main(argv=None) -> int:
    from sepo_ray.run import DEFAULT_ITERATIONS

    p = argparse.ArgumentParser(prog="python -m sepo_ray.compare", description=__doc__.splitlines()[0])
    p.add_argument("task", choices=["dna"])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help="fine-tuning iterations per variant (same budget; default: the run's default)",
    )
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for all runs"
    )
    p.add_argument("--seed", type=int, default=0, help="training seed (the same for every variant)")
    p.add_argument("--num-samples", type=int, default=640)
    p.add_argument("--seeds", default="0,1,2", help="evaluation seeds")
    p.add_argument(
        "--steps", type=int, default=None, help="sampling steps T for evaluation (default: the runs' T)"
    )
    p.add_argument("--elbo-steps", type=int, default=None, help="ELBO time draws (default: the evaluator's)")
    p.add_argument("--skip-train", action="store_true", help="evaluate the runs already in DIR/runs")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; valid: {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.output.mkdir(parents=True, exist_ok=True)

    if args.skip_train:
        records = {
            v: json.loads((args.output / "runs" / v / "result.json").read_text())
            for v in variants
            if (args.output / "runs" / v / "result.json").exists()
        }
    else:
        from sepo_ray.run import init_ray

        init_ray(None)
        records = train_variants(args.output, variants, args.iterations, args.seed, args.set)
        import ray

        ray.shutdown()

    import pandas as pd

    from sepo_ray.evaluate import evaluate_rows, format_table, write_outputs
    from sepo_ray.metrics import ELBO_STEPS, default_scorer

    if not records:
        p.error(f"no finished runs in {args.output / 'runs'} for {variants}")
    first = next(iter(records.values()))
    steps = args.steps or int(first["config"]["denoise_steps"])
    budget = oracle_budget(first)
    group = int(first["config"]["group_size"])
    plan = row_plan(records, seeds, args.num_samples, steps, args.elbo_steps or ELBO_STEPS)
    cache = args.output / "rows"
    scorer = None
    metrics, frames = {}, []
    for name, (fingerprint, factory) in plan.items():
        cached = load_cached_row(cache, name, fingerprint)
        if cached is not None:
            print(f"== {name}: reusing {cache / name}.json (same fingerprint)", flush=True)
            row_metrics, row_samples = cached
        else:
            scorer = scorer or default_scorer(elbo_steps=args.elbo_steps or ELBO_STEPS)
            out, row_samples = evaluate_rows(
                {name: factory()}, seeds=seeds, num_samples=args.num_samples, steps=steps, scorer=scorer
            )
            row_metrics = out[name]
            save_cached_row(cache, name, fingerprint, row_metrics, row_samples)
        metrics[name] = row_metrics
        frames.append(row_samples)
    samples = pd.concat(frames, ignore_index=True)
    write_outputs(args.output, metrics, samples)
    budgets = {name: oracle_budget(r) for name, r in records.items()}
    final_kl = {name: float(r["history"][-1]["kl"]) for name, r in records.items() if r["history"]}
    table = format_table(metrics)
    header = (
        f"Oracle budget: {budget} fine-tuning-oracle calls per method ({len(first['history'])} iterations x "
        f"{budget // max(1, len(first['history']))} sequences); best_of_n keeps the best of each group of "
        f"{group} among {budget} pretrained samples ({budget // group} sequences per seed). "
        f"Seeds {seeds}, {args.num_samples} samples per seed and row, T = {steps}. Path KL to the pretrained "
        f"model at the last iteration: {', '.join(f'{k} {v:.3g}' for k, v in final_kl.items())}.\n\n"
    )
    (args.output / "table.md").write_text(header + table + "\n")
    (args.output / "compare.json").write_text(
        json.dumps({"budgets": budgets, "final_kl": final_kl, "steps": steps, "group": group}, indent=2)
    )
    print(header + table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
