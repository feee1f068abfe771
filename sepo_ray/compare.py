"""SEPO against baselines at one oracle budget (the paper's Table 2 / Fig. 2), for any task.

``python -m sepo_ray.compare TASK --output DIR`` (also ``python -m sepo_ray.evaluate TASK --compare DIR``)

``python -m sepo_ray.compare TASK --frontier --output DIR``: every method at several oracle budgets instead
(tuned on equal terms, fine-tuning, best-of-N, SVDD guidance; :mod:`sepo_ray.frontier`).

1. fine-tunes each variant with :func:`sepo_ray.run.train` (same iterations, batch and seed, so the same number
   of fine-tuning-reward calls), into ``DIR/runs/<variant>/`` (a finished run is reused, an unfinished one
   resumed);
2. evaluates every row over the seeds (3 x 640 samples by default) with the task's held-out table;
3. writes ``DIR/metrics.json``, ``DIR/table.md`` (Markdown), the task's violin plot and ``DIR/samples.parquet``.

Each evaluated row is kept in ``DIR/rows/`` with a fingerprint of what produced it (the generator file's
hash, seeds, sample count, T, ELBO draws, the task's scoring artifacts, the reward budget): a rerun, or one
that adds a variant, evaluates only the rows that changed, and an interrupted comparison loses at most the
row it was on. Paths inside ``DIR`` are relative, so the directory can be moved.

Rows: ``pretrained``; ``best_of_n`` (the pretrained model with the same reward budget spent on selection: the
budget's C candidates form groups of N = group size, the fine-tuning reward keeps the best of each group, so
the row holds C / N sequences per seed; with prompts each group completes one prompt); ``sepo_grpo`` (SEPO,
loss at t -> 0); ``sepo_no_snis`` (pi_hat from y's single parent, no SNIS); ``sepo_gradient_flow`` (one
corrector step after each predictor step, Sec. 3.3); ``trajectory_grpo`` (the DDPO / d1-style policy gradient
on the sampler's own per-step log-probabilities); ``sepo_t_grpo`` (SEPO at every noise level, objective
``sepo_t``); ``sepo_t_critic`` (the same with the PPO critic's advantage instead of GRPO's); and the task's
reference rows of real data. Every variant names its objective and the task's other defaults apply; every
objective shares one alpha scale (``sepo_ray.sepo.update``), so the variants differ only in what they name.

``--alphas A,B,...`` trains every chosen variant at each KL weight instead (runs ``<variant>_kl<alpha>``) and
draws ``DIR/reward_kl.png``: held-out reward (and the task's score metric) against the final path KL to the
pretrained model, the reward-vs-KL frontier.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from sepo_ray.run import DEFAULT_TASK, checkpoint_path, read_record, trained_reward
from sepo_ray.settings import parse_overrides

#: variant -> its settings; each names its objective, so a task default (text: sepo_t) does not rename a row
VARIANTS: dict[str, list[str]] = {
    "sepo_grpo": ["objective=sepo"],
    "sepo_no_snis": ["objective=sepo", "snis_samples=0"],
    "sepo_gradient_flow": ["objective=sepo", "corrector_steps=1"],
    "trajectory_grpo": ["objective=trajectory"],
    "sepo_t_grpo": ["objective=sepo_t"],
    "sepo_t_critic": ["objective=sepo_t", "advantage=critic"],
}
KL_WINDOW = 3  # final KL of a run: the mean of its last iterations' path KL (one batch's is noisy)


def variant_plan(variants: list[str], alphas: list[float] | None = None) -> dict[str, list[str]]:
    """Run name -> settings: each variant, or with ``alphas`` each variant at each KL weight
    (``<variant>_kl<alpha>``, the runs of the reward-vs-KL frontier)."""
    if not alphas:
        return {v: list(VARIANTS[v]) for v in variants}
    return {f"{v}_kl{a:g}": [*VARIANTS[v], f"kl_alpha={a:g}"] for v in variants for a in alphas}


def final_kl(record: dict) -> float:
    """Mean path KL to the pretrained model (nats per sequence) over a run's last ``KL_WINDOW`` iterations."""
    kls = [float(h["kl"]) for h in record["history"][-KL_WINDOW:]]
    return float(np.mean(kls))


def train_variants(
    task: str, out: Path, variants: dict[str, list[str]], iterations: int, seed: int, extra: list[str]
) -> dict[str, dict]:
    """Runs (or resumes, or reuses) each run of ``variants`` (name -> settings, :func:`variant_plan`);
    returns name -> result.json record."""
    from sepo_ray.run import train, trained_as
    from sepo_ray.tasks import get_task

    records = {}
    task_obj = get_task(task)
    pinned = task_obj.benchmark_reward_pin()
    for name, settings in variants.items():
        run_dir = out / "runs" / name
        record = read_record(run_dir)
        wanted = {**pinned, **parse_overrides(settings + extra)}
        if record is not None and (record.get("seed") != seed or not trained_as(record, wanted, task_obj)):
            raise ValueError(
                f"{run_dir} was trained with seed {record.get('seed')} and overrides {record.get('overrides')}, "
                f"this comparison asks for seed {seed} and {wanted}: use another --output or remove that run"
            )
        done = record is not None and record["history"] and record["history"][-1]["iteration"] >= iterations
        if not done:
            print(
                f"== fine-tuning {name}: {iterations} iterations, seed {seed}, overrides {wanted}", flush=True
            )
            record = train(task, run_dir, iterations, seed, wanted, resume=record is not None, evaluate=False)
        records[name] = record
    return records


def oracle_budget(record: dict) -> int:
    """Fine-tuning-oracle calls a run spent: iterations x sequences per iteration."""
    cfg = record["config"]
    return len(record["history"]) * int(cfg["prompts_per_batch"]) * int(cfg["group_size"])


def best_of_n_row(task, budget: int, group: int, steps: int, reward: str | None = None):
    """Row callable: seed -> the best of each group of ``group`` pretrained samples (C = budget candidates).

    For a task with prompts each group is ``group`` completions of one prompt: the seed's first C / N
    evaluation prompts, the ones the other rows' first C / N sequences complete (so they pair)."""
    from sepo_ray.evaluation import load_generator
    from sepo_ray.oracles.pool import resolve_reward

    model, score = load_generator(task, "pretrained"), resolve_reward(reward or task.default_reward)
    designs = budget // group

    def row(seed: int) -> list[str]:
        prompt = task.evaluation_prompts(seed, designs)  # (C / N, P) or None
        if prompt is not None:
            prompt = prompt.repeat_interleave(group, dim=0)  # (C, P): N completions of each prompt
        candidates = task.sample(
            model, designs * group, steps, seed=10_000 + seed, batch_size=320, prompt=prompt
        )
        scores = np.asarray(score(candidates)).reshape(designs, group)  # (C / N, N)
        best = scores.argmax(axis=1) + np.arange(scores.shape[0]) * group
        return [candidates[i] for i in best]

    return row


def reward_kl_plot(path: Path, metrics: dict, kls: dict[str, float], scorer) -> Path:
    """The reward-vs-KL frontier (as the DPO paper's IMDb figure): for each fine-tuned run its held-out
    metric (mean over seeds, bar: std) against its final path KL; runs of one variant at several KL weights
    (``<variant>_kl<alpha>``) joined in order of KL; the pretrained row at KL 0. One panel for the scorer's
    first metric (the fine-tuning reward) and one for its ``score_metric`` when that is another (text: the
    held-out judge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys([next(iter(scorer.metric_labels)), getattr(scorer, "score_metric", None)]))
    keys = [k for k in keys if k]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
    families: dict[str, list[str]] = {}
    for name in kls:
        families.setdefault(name.rsplit("_kl", 1)[0] if "_kl" in name else name, []).append(name)
    for ax, key in zip(axes[0], keys):
        for family, names in families.items():
            names = sorted(names, key=kls.get)
            xs = [kls[n] for n in names]
            ys = [metrics[n][key]["mean"] for n in names]
            es = [metrics[n][key]["std"] for n in names]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=family)
            for n, x, y in zip(names, xs, ys):
                if n != family:
                    ax.annotate(f"α {n.rsplit('_kl', 1)[1]}", (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")  # fmt: skip
        if "pretrained" in metrics:
            ax.plot([0.0], [metrics["pretrained"][key]["mean"]], "k*", markersize=11, label="pretrained")
        ax.set_xlabel("path KL to the pretrained model (nats / sequence)")
        ax.set_ylabel(scorer.metric_labels.get(key, key))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


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
    from sepo_ray.runtime import write_json

    cache.mkdir(parents=True, exist_ok=True)
    samples.to_parquet(cache / f"{name}.parquet", index=False)
    write_json(cache / f"{name}.json", {"fingerprint": fingerprint, "metrics": metrics})


def row_plan(
    task,
    out: Path,
    records: dict[str, dict],
    seeds: list[int],
    num_samples: int,
    steps: int,
    elbo_steps,
    probed: dict[str, list[str]] | None = None,
) -> dict:
    """Every row of the table, in order: name -> (fingerprint, factory of its spec for ``evaluate_rows``).

    ``probed``: reference draws for ``seeds[0]`` already made (:func:`sepo_ray.evaluation.probe_references`).
    """
    from sepo_ray.evaluation import load_generator, reference_row

    first = next(iter(records.values()))
    budget, group = oracle_budget(first), int(first["config"]["group_size"])
    reward = trained_reward(first, task.default_reward)  # best-of-N selects on the reward the runs trained on
    settings = {
        "seeds": list(seeds),
        "num_samples": num_samples,
        "steps": steps,
        "elbo_steps": elbo_steps,
        "artifacts": task.evaluation_fingerprint(),
    }
    pretrained = task.generator_file(None)
    pretrained_hash = _file_hash(pretrained) if pretrained is not None else "built-in"
    sources = {
        "pretrained": ({"generator": pretrained_hash}, lambda: load_generator(task, "pretrained")),
        "best_of_n": (
            {"generator": pretrained_hash, "budget": budget, "group": group, "reward": reward},
            lambda: best_of_n_row(task, budget, group, steps, reward),
        ),
    }
    for name, record in records.items():
        source = task.generator_file(checkpoint_path(out / "runs" / name, record["final_checkpoint"]))
        sources[name] = ({"generator": _file_hash(source)}, lambda src=source: load_generator(task, src))
    for ref, draw in task.reference_rows().items():
        done = (seeds[0], probed[ref]) if probed and ref in probed else None
        sources[ref] = ({"reference": ref}, lambda d=draw, done=done: reference_row(d, num_samples, done))
    return {name: (row_fingerprint(name, src, settings), f) for name, (src, f) in sources.items()}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--frontier" in argv:  # `compare TASK --frontier --output DIR [...]`: quality against oracle calls
        from sepo_ray.frontier import main as frontier_main

        return frontier_main([a for a in argv if a != "--frontier"])
    from sepo_ray import evaluation
    from sepo_ray.evaluate import parse_seeds
    from sepo_ray.tasks import available_tasks, get_task

    p = argparse.ArgumentParser(prog="python -m sepo_ray.compare", description=__doc__.splitlines()[0])
    p.add_argument("task", nargs="?", default=DEFAULT_TASK, help=f"task ({', '.join(available_tasks())})")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="fine-tuning iterations per variant (same budget; default: the task's `run` default)",
    )
    p.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override for all runs"
    )
    p.add_argument(
        "--alphas",
        default=None,
        help="comma-separated KL weights: every variant at each (runs <variant>_kl<alpha>), for the "
        "reward-vs-KL frontier (reward_kl.png)",
    )
    p.add_argument("--seed", type=int, default=0, help="training seed (the same for every variant)")
    p.add_argument("--num-samples", type=int, default=640)
    p.add_argument("--seeds", default="0,1,2", help="evaluation seeds")
    p.add_argument(
        "--steps", type=int, default=None, help="sampling steps T for evaluation (default: the runs' T)"
    )
    p.add_argument("--elbo-steps", type=int, default=None, help="ELBO time draws (default: the task's)")
    p.add_argument("--skip-train", action="store_true", help="evaluate the runs already in DIR/runs")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; valid: {list(VARIANTS)}")
    seeds = parse_seeds(args.seeds, p)
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()] if args.alphas else None
    except ValueError:
        p.error(f"--alphas: expected comma-separated numbers, got {args.alphas!r}")
    if alphas is not None and (not alphas or min(alphas) < 0):
        p.error(f"--alphas: expected non-negative KL weights, got {args.alphas!r}")
    runs = variant_plan(variants, alphas)
    if args.output.exists() and not args.output.is_dir():
        p.error(f"--output {args.output} is a file, not a directory")
    try:
        task = get_task(args.task)
        parse_overrides(args.set)
    except ValueError as e:
        p.error(str(e))
    iterations = args.iterations if args.iterations is not None else int(task.default_iterations)
    if iterations < 1:
        p.error("--iterations must be >= 1")
    try:  # a reference set smaller than --num-samples fails now, not after hours of training
        probed = evaluation.probe_references(task.reference_rows(), seeds[0], args.num_samples)
    except ValueError as e:
        p.error(f"--num-samples {args.num_samples}: {e}; use fewer samples")
    args.output.mkdir(parents=True, exist_ok=True)

    if args.skip_train:
        records = {v: r for v in runs if (r := read_record(args.output / "runs" / v)) is not None}
    else:
        import ray

        from sepo_ray.runtime import init_ray

        init_ray()
        try:
            records = train_variants(args.task, args.output, runs, iterations, args.seed, args.set)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        ray.shutdown()

    import pandas as pd

    from sepo_ray.runtime import write_json

    if not records:
        p.error(f"no finished runs in {args.output / 'runs'} for {list(runs)}")
    first = next(iter(records.values()))
    steps = args.steps or int(first["config"]["denoise_steps"])
    budget = oracle_budget(first)
    group = int(first["config"]["group_size"])
    scorer = task.scorer(elbo_steps=args.elbo_steps)
    elbo_steps = getattr(scorer, "elbo_steps", args.elbo_steps)
    try:
        plan = row_plan(task, args.output, records, seeds, args.num_samples, steps, elbo_steps, probed)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    cache = args.output / "rows"
    cached_rows = {name: load_cached_row(cache, name, fp) for name, (fp, _) in plan.items()}
    specs = {}
    for name, (_, factory) in plan.items():  # every generator to evaluate is loaded (and checked) first
        if cached_rows[name] is None:
            try:
                specs[name] = factory()
            except (ValueError, FileNotFoundError) as e:
                p.error(f"row {name}: {e}")
    metrics, frames = {}, []
    for name, (fingerprint, _) in plan.items():
        cached = cached_rows[name]
        if cached is not None:
            print(f"== {name}: reusing {cache / name}.json (same fingerprint)", flush=True)
            row_metrics, row_samples = cached
        else:
            out, row_samples = evaluation.evaluate_rows(
                task,
                {name: specs.pop(name)},
                seeds=seeds,
                num_samples=args.num_samples,
                steps=steps,
                scorer=scorer,
            )
            row_metrics = out[name]
            save_cached_row(cache, name, fingerprint, row_metrics, row_samples)
        metrics[name] = row_metrics
        frames.append(row_samples)
    samples = pd.concat(frames, ignore_index=True)
    if (
        getattr(scorer, "paired_score", None) and "pretrained" in metrics
    ):  # e.g. the text judge's win rate on the same prompts
        for name in metrics:
            wins = evaluation.win_rates(samples, name, "pretrained", scorer.paired_score)
            metrics[name]["win_rate"] = evaluation.mean_std(wins)
    evaluation.write_outputs(args.output, metrics, samples, scorer)
    budgets = {name: oracle_budget(r) for name, r in records.items()}
    kls = {name: final_kl(r) for name, r in records.items() if r["history"]}
    table = evaluation.format_table(metrics, scorer.metric_labels, scorer.metric_digits)
    header = (
        f"Oracle budget: {budget} fine-tuning-oracle calls per method ({len(first['history'])} iterations x "
        f"{budget // max(1, len(first['history']))} sequences); best_of_n keeps the best of each group of "
        f"{group} among {budget} pretrained samples ({budget // group} sequences per seed). "
        f"Seeds {seeds}, {args.num_samples} samples per seed and row, T = {steps}. Path KL to the pretrained "
        f"model (nats per sequence, mean of the last {KL_WINDOW} iterations): "
        f"{', '.join(f'{k} {v:.3g}' for k, v in kls.items())}.\n\n"
    )
    (args.output / "table.md").write_text(header + table + "\n")
    write_json(
        args.output / "compare.json",
        {"budgets": budgets, "final_kl": kls, "steps": steps, "group": group, "overrides": runs},
    )
    if len(kls) > 1:
        reward_kl_plot(args.output / "reward_kl.png", metrics, kls, scorer)
    print(header + table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
