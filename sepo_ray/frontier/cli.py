"""``python -m sepo_ray.compare TASK --frontier --output DIR`` (or ``python -m sepo_ray.frontier``): check, tune,
train, evaluate every row (cached), write the outputs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sepo_ray.compare import _file_hash, load_cached_row, row_fingerprint, save_cached_row
from sepo_ray.settings import parse_overrides

from .plan import (
    DEFAULT_BUDGETS,
    FINETUNE,
    METHODS,
    best_row,
    budget_iterations,
    checkpoint_every,
    split_sets,
    standard_errors,
)
from .report import format_frontier, plot_frontier
from .rows import (
    _calls_until,
    _generator_hash,
    _run_dir,
    best_of_n_row,
    checkpoint_generator,
    sample_row,
    svdd_row,
    train_runs,
)
from .tuning import tune_methods


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    from sepo_ray.run import DEFAULT_TASK

    p = argparse.ArgumentParser(
        prog="python -m sepo_ray.compare TASK --frontier",
        description="held-out quality against the oracle calls spent, for every method",
    )
    p.add_argument("task", nargs="?", default=DEFAULT_TASK)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {list(METHODS)}")
    p.add_argument(
        "--budgets", default=",".join(map(str, DEFAULT_BUDGETS)), help="oracle calls per design batch"
    )
    p.add_argument("--design-size", type=int, default=64, help="sequences per design batch (D)")
    p.add_argument("--design-batches", type=int, default=10, help="design batches per seed and row")
    p.add_argument(
        "--seeds", default="0,1,2", help="training seeds of fine-tuned rows, sampling seeds of others"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="sampling steps T (default: the runs' denoise_steps)"
    )
    p.add_argument("--elbo-steps", type=int, default=None, help="ELBO time draws (default: the task's)")
    p.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="setting for every fine-tuning run, or for one method's (fixed: not tuned)")  # fmt: skip
    p.add_argument("--configs", type=Path, default=None, help="JSON {method: {key: value}} of chosen configs")
    p.add_argument("--tune-trials", type=int, default=4, help="Tune trials per method (0: no tuning)")
    p.add_argument("--tune-seed", type=int, default=0, help="search seed (the same for every method)")
    p.add_argument(
        "--tune-calls",
        type=int,
        default=512,
        help="fine-tuning oracle calls per tuning trial (ASHA's clock; rungs at a quarter and a half)",
    )
    p.add_argument(
        "--tune-only", action="store_true", help="stop after tuning (DIR/tuning.json has the choices)"
    )
    p.add_argument("--tune-realism", type=float, default=0.85, help="held-out realism guard (0: none)")
    p.add_argument("--tune-samples", type=int, default=128, help="held-out samples per trial evaluation")
    p.add_argument("--svdd-candidates", type=int, default=4, help="most SVDD candidates M per scored step")
    p.add_argument(
        "--svdd-temperature", type=float, default=0.0, help="SVDD selection temperature (0: argmax)"
    )
    p.add_argument(
        "--score-metric", default=None, help="metric the frontier ranks by (default: the scorer's first)"
    )
    p.add_argument("--realism-metric", default=None, help="metric of the realism guard (default: none)")
    p.add_argument("--realism-min", type=float, default=0.9, help="realism guard of the best-row sentences")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray (default: all)")
    return p.parse_args(argv), p


@dataclass
class Frontier:
    """What the frontier's rows need: the checked arguments, each fine-tuning method's settings, batch and
    checkpoint iterations, its finished runs, and the scorer with the metrics it ranks by."""

    args: argparse.Namespace
    task: object
    methods: list[str]
    budgets: list[int]
    seeds: list[int]
    configs: dict[str, dict]
    batches: dict[str, int]
    needed: dict[str, list[int]]
    scorer: object
    score: str
    realism: str | None
    records: dict[str, dict[int, dict]] = field(default_factory=dict)
    svdd_calls: dict[int, dict] = field(default_factory=dict)

    @property
    def tuned(self) -> list[str]:
        return [m for m in self.methods if m in FINETUNE]

    @property
    def num(self) -> int:
        """Sequences per seed and row."""
        return self.args.design_size * self.args.design_batches

    def settings(self) -> dict:
        """What every row's numbers depend on besides its own source (part of each row's fingerprint)."""
        return {
            "seeds": self.seeds,
            "design_size": self.args.design_size,
            "design_batches": self.args.design_batches,
            "steps": self.args.steps,
            "elbo_steps": getattr(self.scorer, "elbo_steps", self.args.elbo_steps),
            "artifacts": self.task.evaluation_fingerprint(),
            "reward": self.task.default_reward,
        }

    def checkpoints(self, method: str, calls: int) -> tuple[int, dict[int, Path]]:
        """(iteration, {seed: generator file}) of ``method``'s runs after ``calls`` fine-tuning calls."""
        it = budget_iterations(calls, self.batches[method], method)
        out = self.args.output
        gens = {
            s: checkpoint_generator(self.task, _run_dir(out, method, s), self.records[method][s], it)
            for s in self.seeds
        }
        spent = {s: _calls_until(self.records[method][s], it, self.batches[method]) for s in self.seeds}
        if set(spent.values()) != {calls}:
            raise ValueError(f"{method} at {calls} calls: the runs spent {spent} calls by iteration {it}")
        return it, gens

    def row_sources(
        self, done: list[dict]
    ) -> list[tuple[str, int, Callable[[], tuple[dict, Callable, dict]]]]:
        """Every row in order, as (method, budget, source); ``source()`` gives (fingerprint source, row callable
        seed -> sequences, info: calls and config). Budgets ascend, half budgets included when
        finetuned_best_of_n needs them (it reads the rows evaluated so far from ``done``)."""
        a, task, tuned = self.args, self.task, self.tuned
        combo = "finetuned_best_of_n" in self.methods
        pretrained = {s: "pretrained" for s in self.seeds}
        pools, reward, num, design = a.output / "pools", task.default_reward, self.num, a.design_size
        plan = []
        if "pretrained" in self.methods:
            info = {"calls": {"fine_tuning": 0, "selection": 0}, "config": {}}
            src = {"generator": _generator_hash(task, "pretrained")}
            plan.append(("pretrained", 0, lambda: (src, sample_row(task, pretrained, num, a.steps), info)))
        halves = {b // 2 for b in self.budgets} if combo else set()
        for b in sorted(set(self.budgets) | halves):
            for m in tuned:

                def finetuned(m=m, b=b):
                    it, gens = self.checkpoints(m, b)
                    src = {
                        "generators": {str(s): _file_hash(g) for s, g in gens.items()},
                        "config": self.configs[m],
                    }
                    info = {"iterations": it, "calls": {"fine_tuning": b, "selection": 0},
                            "config": {**self.configs[m], "iterations": it}}  # fmt: skip
                    return src, sample_row(task, gens, num, a.steps), info

                plan.append((m, b, finetuned))
            if b not in self.budgets:
                continue
            if "best_of_n" in self.methods:

                def best_of_n(n=b // design):
                    info = {"calls": {"fine_tuning": 0, "selection": n * design}, "config": {"n": n}}
                    src = {"generator": _generator_hash(task, "pretrained"), "n": n}
                    return src, best_of_n_row(task, pretrained, n, num, a.steps, reward, pools), info

                plan.append(("best_of_n", b, best_of_n))
            if "svdd" in self.methods:
                from sepo_ray.diffusion.guidance import svdd_plan

                def svdd(b=b, schedule=svdd_plan(b // design, a.steps, a.svdd_candidates)):
                    cand, ks = schedule
                    cfg = {"candidates": cand, "scored_steps": list(ks), "temperature": a.svdd_temperature,
                           "predict": "argmax"}  # fmt: skip
                    info = {"calls": {"fine_tuning": 0, "selection": cand * len(ks) * design}, "config": cfg}
                    src = {"generator": _generator_hash(task, "pretrained"), **cfg}
                    log = self.svdd_calls.setdefault(b, {})
                    return src, svdd_row(task, pretrained, schedule, a, reward, b, log), info

                plan.append(("svdd", b, svdd))
            if combo:

                def finetuned_best_of_n(b=b):
                    half, n = b // 2, (b - b // 2) // design
                    rows = [r for r in done if r["method"] in tuned and r["budget_calls"] == half]
                    base = best_row(rows, self.score, self.realism, a.realism_min) or best_row(
                        rows, self.score, None, 0
                    )
                    m = base["method"]
                    it, gens = self.checkpoints(m, half)
                    src = {"generators": {str(s): _file_hash(g) for s, g in gens.items()}, "n": n, "base": m}
                    info = {"calls": {"fine_tuning": half, "selection": n * design},
                            "config": {"base_method": m, "base_calls": half, "n": n, **self.configs[m], "iterations": it}}  # fmt: skip
                    return src, best_of_n_row(task, gens, n, num, a.steps, reward, pools), info

                plan.append(("finetuned_best_of_n", b, finetuned_best_of_n))
        return plan

    def evaluate(self, i: int, total: int, method: str, budget: int, source) -> dict:
        """One frontier row (cached under DIR/rows/ by its fingerprint), with a progress line before and after."""
        from sepo_ray import evaluation

        name, cache = f"{method}_{budget}", self.args.output / "rows"
        src, row_fn, info = source()
        fingerprint = row_fingerprint(name, src, self.settings())
        cached = load_cached_row(cache, name, fingerprint)
        t0, where = time.time(), f"[{i}/{total}] {method} at {budget} calls"
        if cached is not None:
            metrics = cached[0]
            print(f"{where}: reusing {cache / name}.json", flush=True)
        else:
            print(f"{where}: evaluating {len(self.seeds)} x {self.num} sequences", flush=True)
            out, samples = evaluation.evaluate_rows(
                self.task, {name: row_fn}, seeds=self.seeds, num_samples=self.num, steps=self.args.steps,
                scorer=self.scorer,
            )  # fmt: skip
            if method == "svdd":  # the calls counted while sampling, per seed and design batch
                counted = self.svdd_calls[budget]
                info["calls"]["selection"] = max(max(v) for v in counted.values())
                info["counted_calls"] = {str(s): v for s, v in counted.items()}
            metrics = {"_info": info, **out[name]}
            save_cached_row(cache, name, fingerprint, metrics, samples)
        info = metrics.get("_info", info)  # a cached row keeps what it counted when it was evaluated
        metrics = standard_errors({k: v for k, v in metrics.items() if k != "_info"}, len(self.seeds))
        row = {"method": method, "budget_calls": budget, **info, "metrics": metrics, "seeds": self.seeds,
               "sequences_per_seed": self.num}  # fmt: skip
        shown = f"{self.score} {metrics[self.score]['mean']:.3f} ± {metrics[self.score]['se']:.3f}"
        if self.realism:
            shown += f", {self.realism} {metrics[self.realism]['mean']:.3f}"
        print(f"{where}: {shown} ({time.time() - t0:.0f} s)", flush=True)
        return row

    def references(self) -> list[dict]:
        """The task's rows of real data (no calls), evaluated like the others and cached."""
        from sepo_ray import evaluation

        cache, out = self.args.output / "rows", []
        for ref, draw in self.task.reference_rows().items():
            fp = row_fingerprint(ref, {"reference": ref, "num": self.num}, self.settings())
            cached = load_cached_row(cache, ref, fp)
            if cached is None:
                metrics, samples = evaluation.evaluate_rows(
                    self.task, {ref: evaluation.reference_row(draw, self.num)}, seeds=self.seeds,
                    num_samples=self.num, steps=self.args.steps, scorer=self.scorer, progress=False,
                )  # fmt: skip
                save_cached_row(cache, ref, fp, metrics[ref], samples)
                cached = (metrics[ref], samples)
            metrics = standard_errors(cached[0], len(self.seeds))
            out.append({"method": ref, "budget_calls": None, "metrics": metrics, "seeds": self.seeds})
        return out


def setup(argv=None) -> Frontier:
    """Checks every argument, each method's settings and budgets, and the metrics, before anything runs
    (an argparse error names what is wrong)."""
    from sepo_ray.evaluate import parse_seeds
    from sepo_ray.run import build_config
    from sepo_ray.tasks import get_task

    args, p = parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {unknown}; valid: {list(METHODS)}")
    try:
        budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    except ValueError:
        p.error(f"--budgets must be comma-separated integers, got {args.budgets!r}")
    if not budgets or budgets[0] < 1:
        p.error("--budgets must name at least one positive budget")
    if args.design_size < 1 or args.design_batches < 1 or args.tune_trials < 0 or args.tune_calls < 1:
        p.error("--design-size, --design-batches and --tune-calls must be >= 1, --tune-trials >= 0")
    if args.tune_only and not args.tune_trials:
        p.error("--tune-only needs --tune-trials >= 1")
    seeds = parse_seeds(args.seeds, p)
    tuned = [m for m in methods if m in FINETUNE]
    combo = "finetuned_best_of_n" in methods
    if combo and not tuned:
        p.error("finetuned_best_of_n needs at least one fine-tuning method in --methods")
    try:
        task = get_task(args.task)
        args.common, args.own = split_sets(args.set, tuned)
        args.chosen = json.loads(args.configs.read_text()) if args.configs else {}
    except (ValueError, OSError) as e:
        p.error(str(e))
    fixed = [args.common, *args.own.values(), *(c for c in args.chosen.values() if isinstance(c, dict))]
    if any("reward" in f for f in fixed):
        p.error(
            f"--set / --configs reward: the frontier trains and selects every method on the task's reward "
            f"({task.default_reward}); to compare methods on another reward, make it a task's default_reward"
        )
    bad = [m for m in args.chosen if m not in FINETUNE or not isinstance(args.chosen[m], dict)]
    if bad:
        p.error(
            f"--configs: {bad} are not fine-tuning methods ({', '.join(FINETUNE)}) mapped to {{key: value}}"
        )
    if task.prompt_length:
        p.error(f"task {task.name!r} conditions on prompts; the frontier compares unconditional samplers")
    for b in budgets:
        if ("best_of_n" in methods and b % args.design_size) or (combo and (b // 2) % args.design_size):
            p.error(
                f"--budgets: {b} (and half of it for finetuned_best_of_n) must be a multiple of --design-size"
            )
        if "svdd" in methods and b < args.design_size:
            p.error(f"--budgets: {b} buys svdd less than one call per sequence of a design batch")
    configs, batches, needed = {}, {}, {}
    try:
        for m in tuned:  # the settings before tuning: the batch and T do not depend on alpha or lr
            configs[m] = {
                **task.benchmark_reward_pin(),
                **args.common,
                **args.chosen.get(m, {}),
                **args.own[m],
                **parse_overrides(FINETUNE[m]),
            }
            batches[m] = build_config(task.name, None, seeds[0], configs[m]).batch_sequences
            spent = list(budgets) + ([b // 2 for b in budgets] if combo else [])
            needed[m] = sorted({budget_iterations(b, batches[m], f"{m} at {b} calls") for b in spent})
            if args.tune_trials:
                budget_iterations(args.tune_calls, batches[m], f"--tune-calls for {m}")
        first = configs[tuned[0]] if tuned else dict(args.common)
        args.steps = args.steps or int(build_config(task.name, None, 0, first).denoise_steps)
    except ValueError as e:
        p.error(str(e))
    scorer = task.scorer(elbo_steps=args.elbo_steps)
    score = args.score_metric or getattr(scorer, "score_metric", None) or next(iter(scorer.metric_labels))
    realism = args.realism_metric or getattr(scorer, "realism_metric", None)
    for key in filter(None, (score, realism)):
        if key not in scorer.metric_labels:
            p.error(f"metric {key!r} is not one of the scorer's {list(scorer.metric_labels)}")
    return Frontier(args, task, methods, budgets, seeds, configs, batches, needed, scorer, score, realism)


def main(argv=None) -> int:
    """Tune (equal terms), train (nested checkpoints), evaluate every row (cached), write the outputs."""
    import ray

    from sepo_ray.runtime import init_ray, write_json

    f = setup(argv)
    a, out = f.args, f.args.output
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"frontier of {f.task.name}: methods {f.methods}, budgets {f.budgets} calls per design batch of "
        f"{a.design_size}, {f.num} sequences x seeds {f.seeds} per row, T = {a.steps}"
        + "".join(
            f"; {m}: {f.batches[m]} sequences/iteration, checkpoints at {f.needed[m]}" for m in f.tuned
        ),
        flush=True,
    )
    tuning = {}
    if f.tuned:
        try:
            tuning = tune_methods(f.task, out, f.tuned, a.common, a.own, a.chosen, a)
            if a.tune_only:
                for m, t in tuning.items():
                    print(f"== tuned {m}: {t['config'] or 'the run defaults'} ({t['source']})", flush=True)
                print(f"== tuning done: {out / 'tuning.json'}", flush=True)
                return 0
            started = init_ray(a.num_cpus)
            try:
                for m in f.tuned:
                    f.configs[m] = {**f.task.benchmark_reward_pin(), **a.common, **tuning[m]["config"], **a.chosen.get(m, {}), **a.own[m],
                                    **parse_overrides(FINETUNE[m])}  # fmt: skip
                    every = checkpoint_every(f.needed[m])
                    f.records[m] = train_runs(
                        f.task.name, out, m, f.configs[m], f.seeds, f.needed[m][-1], every
                    )
            finally:
                if started:
                    ray.shutdown()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    rows: list[dict] = []
    plan = f.row_sources(rows)
    for i, (method, budget, source) in enumerate(plan, 1):
        try:
            rows.append(f.evaluate(i, len(plan), method, budget, source))
        except (ValueError, FileNotFoundError) as e:
            print(f"error: row {method} at {budget} calls: {e}", file=sys.stderr)
            return 2
    report = {
        "task": f.task.name,
        "budgets": f.budgets,
        "design_size": a.design_size,
        "design_batches": a.design_batches,
        "seeds": f.seeds,
        "steps": a.steps,
        "score_metric": f.score,
        "realism_metric": f.realism,
        "realism_min": a.realism_min,
        "tuning": {m: {k: v for k, v in t.items() if k != "search"} for m, t in tuning.items()},
        "rows": rows,
        "references": f.references(),
    }
    write_json(out / "frontier.json", report)
    text = format_frontier(report, f.scorer)
    (out / "frontier.md").write_text(text)
    plot_frontier(report, f.scorer, out / "frontier.png")
    print(text, flush=True)
    return 0
