"""Build an :class:`~.engine.Experiment` with every check done before anything runs (:func:`prepare`), run it
(:func:`run_experiment`) and write its report (:func:`write_report`)."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sepo_ray.protocol import DESIGNS, check_seeds, protocol_record, winners_by_designs

from .engine import Experiment, Tuning
from .plan import budget_iterations, plan_entries, split_sets


def prepare(
    task_name: str,
    output: Path,
    methods: Sequence[str],
    budgets: Sequence[int],
    seeds: Sequence[int],
    design_size: int = 64,
    design_batches: int = 10,
    steps: int | None = None,
    elbo_steps: int | None = None,
    sets: Sequence[str] = (),
    configs: Path | None = None,
    alphas: Sequence[float] | None = None,
    tuning: Tuning = Tuning(),
    references: bool = True,
    score_metric: str | None = None,
    realism_metric: str | None = None,
    realism_min: float | None = None,
    svdd_candidates: int = 4,
    svdd_temperature: float = 0.0,
    num_cpus: int | None = None,
    designs: Sequence[int] = DESIGNS,
) -> Experiment:
    """Checks every argument, each entry's settings and budgets, the metrics and the reference sets, before
    anything runs; ValueError (one line) names what is wrong."""
    from sepo_ray.evaluation import probe_references
    from sepo_ray.resolve import resolve_settings
    from sepo_ray.tasks import get_task

    task = get_task(task_name)
    entries = plan_entries(methods, alphas)
    budgets = sorted(set(budgets))
    if not budgets or budgets[0] < 1:
        raise ValueError("--budgets must name at least one positive budget")
    if tuning.calls is None:  # tuned for the horizon it is reported at: the largest budget
        tuning = dataclasses.replace(tuning, calls=budgets[-1])
    if design_size < 1 or design_batches < 1 or tuning.trials < 0 or tuning.calls < 1:
        raise ValueError("--design-size, --design-batches and --tune-calls must be >= 1, --tune-trials >= 0")
    if not designs or min(designs) < 1:
        raise ValueError(f"--designs must name positive numbers of designs, got {list(designs)}")
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds must name distinct seeds >= 0, got {list(seeds)}")
    if tuning.trials:
        check_seeds(seeds, [tuning.seed])
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file, not a directory")
    trained = [e.name for e in entries.values() if e.trains]
    kinds = {e.method.kind for e in entries.values()}
    if "finetune+selection" in kinds and not trained:
        raise ValueError("finetuned_best_of_n needs at least one fine-tuning method in --methods")
    if "svdd" in entries and task.prompt_length:
        raise ValueError(f"svdd does not condition on prompts; task {task.name!r} has them: drop svdd")
    for b in budgets:
        if ("best_of_n" in entries and b % design_size) or (
            "finetune+selection" in kinds and (b // 2) % design_size
        ):
            raise ValueError(
                f"--budgets: {b} (and half of it for finetuned_best_of_n) must be a multiple of --design-size"
            )
        if "svdd" in entries and b < design_size:
            raise ValueError(f"--budgets: {b} buys svdd less than one call per sequence of a design batch")
    common, own = split_sets(sets, trained)
    chosen = load_configs(configs)
    bad = [m for m in chosen if m not in trained]
    if bad:
        raise ValueError(f"--configs: {bad} are not fine-tuning entries here ({', '.join(trained)})")
    if any("reward" in f for f in (common, *own.values(), *chosen.values())):
        raise ValueError(
            f"--set / --configs reward: an experiment trains and selects every method on the task's reward "
            f"({task.default_reward}); to compare methods on another reward, make it a task's default_reward"
        )
    exp = Experiment(
        task=task, output=output, entries=entries, budgets=budgets, seeds=list(seeds), design_size=design_size,
        design_batches=design_batches, steps=0, scorer=None, score="", realism=None, realism_min=0.0,
        tuning=tuning, common=common, own=own, chosen=chosen, references=references,
        elbo_steps=elbo_steps, svdd_candidates=svdd_candidates, svdd_temperature=svdd_temperature, num_cpus=num_cpus,
        designs=sorted(set(int(k) for k in designs)),
    )  # fmt: skip
    resolve_settings(task, benchmark=True, cli=common)  # the common settings alone are valid
    spent = list(budgets) + ([b // 2 for b in budgets] if "finetune+selection" in kinds else [])
    for name in trained:  # the batch and T do not depend on the tuned fields
        settings = exp.run_settings(entries[name], exp.seeds[0])
        exp.batches[name] = int(settings["prompts_per_batch"]) * int(settings["group_size"])
        exp.needed[name] = sorted(
            {budget_iterations(b, exp.batches[name], f"{name} at {b} calls") for b in spent}
        )
        if tuning.trials:
            budget_iterations(tuning.calls, exp.batches[name], f"--tune-calls for {name}")
    first = (
        exp.run_settings(entries[trained[0]], 0)
        if trained
        else resolve_settings(task, benchmark=True, cli=common)
    )
    exp.steps = int(steps or first["denoise_steps"])
    exp.scorer = task.scorer(elbo_steps=elbo_steps)
    exp.score = (
        score_metric or getattr(exp.scorer, "score_metric", None) or next(iter(exp.scorer.metric_labels))
    )
    exp.realism = realism_metric or getattr(exp.scorer, "realism_metric", None)
    exp.realism_min = float(
        realism_min if realism_min is not None else getattr(exp.scorer, "realism_min", 0.0)
    )
    for key in filter(None, (exp.score, exp.realism)):
        if key not in exp.scorer.metric_labels:
            raise ValueError(f"metric {key!r} is not one of the scorer's {list(exp.scorer.metric_labels)}")
    if references:  # a reference set smaller than a row fails now, not after hours of training
        try:
            probe_references(task.reference_rows(), exp.seeds[0], exp.num)
        except ValueError as e:
            raise ValueError(f"{exp.num} sequences per row: {e}; use fewer (--design-batches)") from None
    return exp


def run_experiment(exp: Experiment, tune_only: bool = False) -> dict | None:
    """Tune, train, evaluate every row, write the report; returns its content (None after ``tune_only``)."""
    import ray

    exp.output.mkdir(parents=True, exist_ok=True)
    print(exp.describe(), flush=True)
    tuning = exp.tune() if exp.tuning.trials else {}
    if tune_only:
        for m, t in tuning.items():
            print(f"== tuned {m}: {t['config'] or 'the run defaults'} ({t['source']})", flush=True)
        print(f"== tuning done: {exp.output / 'tuning.json'}", flush=True)
        return None
    if exp.trained:
        was_up = ray.is_initialized()  # the training loop starts Ray for the first run it trains
        try:
            exp.train()
        finally:
            if not was_up and ray.is_initialized():
                ray.shutdown()
    exp.check_generators()
    rows, frames = [], []
    plan = exp.row_sources()
    for i, (entry, budget, source) in enumerate(plan, 1):
        row, samples = exp.evaluate(i, len(plan), entry, budget, source)
        rows.append(row)
        frames.append(samples)
    references, ref_frames = exp.reference_rows()
    report = {
        "protocol": protocol_of(exp),
        "task": exp.task.name,
        "budgets": exp.budgets,
        "design_size": exp.design_size,
        "design_batches": exp.design_batches,
        "seeds": exp.seeds,
        "steps": exp.steps,
        "reward": exp.reward,
        "score_metric": exp.score,
        "realism_metric": exp.realism,
        "realism_min": exp.realism_min,
        "tuning": {m: {k: v for k, v in t.items() if k != "search"} for m, t in tuning.items()},
        "rows": rows,
        "references": references,
        "winners_by_designs": winners_by_designs(
            rows,
            exp.designs,
            exp.score,
            exp.realism,
            exp.realism_min,
            higher_is_better=exp.score not in getattr(exp.scorer, "lower_is_better", ()),
        ),  # fmt: skip
    }
    write_report(exp.output, exp.scorer, report, frames + ref_frames)
    return report


def protocol_of(exp: Experiment) -> dict:
    """The report's ``protocol`` object (:func:`sepo_ray.protocol.protocol_record`)."""
    from sepo_ray.resolve import resolve_settings

    threads = resolve_settings(exp.task, benchmark=True, cli=exp.common)["torch_threads"]
    return protocol_record(
        selection_signal=exp.task.validation_signal
        or "the training reward's mean (the task has no validation signal)",
        evaluation_signals=list(exp.scorer.metric_labels),
        tuning_seeds=[exp.tuning.seed] if exp.tuning.trials else [],
        report_seeds=exp.seeds,
        tuning_calls={e.name: exp.tuning_calls.get(e.name, 0) for e in exp.entries.values()},
        designs=exp.designs,
        min_report_seeds=exp.task.min_report_seeds,
        threads=int(threads),
        tuned_horizon=exp.tuning.calls if exp.tuning.trials else None,
    )


def report_files(out: Path, scorer) -> list[Path]:
    """Every file ``write_report`` may write into ``out``."""
    names = [
        "comparison.json",
        "table.md",
        "metrics.json",
        "samples.parquet",
        "frontier.png",
        "reward_kl.png",
    ]
    if scorer.plot_score is not None:
        names.append(f"{scorer.plot_score}.png")
    return [out / n for n in names]


def write_report(out: Path, scorer, report: dict, frames: list) -> list[Path]:
    """comparison.json, table.md, metrics.json (row -> metrics), samples.parquet, the violin plot of the task's
    per-sequence score, frontier.png (several budgets) and reward_kl.png (runs at several KL weights);
    returns the files written, a subset of ``report_files``."""
    import pandas as pd

    from sepo_ray.evaluation import violin_plot, win_rates
    from sepo_ray.protocol import seed_summary
    from sepo_ray.runtime import write_json

    from .report import format_table, plot_frontier, plot_reward_kl

    samples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    paired = getattr(scorer, "paired_score", None)
    if paired and len(samples) and any(r["method"] == "pretrained" for r in report["rows"]):
        for row in report["rows"]:  # e.g. the text judge's win rate on the same prompts
            wins = win_rates(samples, row["name"], "pretrained", paired)
            if wins:
                row["metrics"]["win_rate"] = seed_summary(wins)
    write_json(out / "comparison.json", report)
    text = format_table(report, scorer)
    (out / "table.md").write_text(text)
    write_json(
        out / "metrics.json", {r["name"]: r["metrics"] for r in [*report["rows"], *report["references"]]}
    )
    written = [out / "comparison.json", out / "table.md", out / "metrics.json"]
    if len(samples):
        samples.to_parquet(out / "samples.parquet", index=False)
        written.append(out / "samples.parquet")
        if scorer.plot_score is not None and scorer.plot_score in samples:
            violin_plot(samples, out / f"{scorer.plot_score}.png", scorer.plot_score, scorer.plot_label)
            written.append(out / f"{scorer.plot_score}.png")
    if len(report["budgets"]) > 1:
        plot_frontier(report, scorer, out / "frontier.png")
        written.append(out / "frontier.png")
    if sum(1 for r in report["rows"] if r.get("kl") is not None) > 1:
        plot_reward_kl(report, scorer, out / "reward_kl.png")
        written.append(out / "reward_kl.png")
    print(text, flush=True)
    sys.stdout.flush()
    return written


def load_configs(path: Path | None) -> dict:
    """``--configs FILE``: {entry: {key: value}}; ValueError for a file that is not such a JSON object."""
    if path is None:
        return {}
    try:
        chosen = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--configs {path}: {e}") from None
    if not isinstance(chosen, dict) or not all(isinstance(v, dict) for v in chosen.values()):
        raise ValueError(f"--configs {path}: expected a JSON object {{entry: {{key: value}}}}")
    return chosen
