"""The experiment: check everything, tune (equal terms), train (nested checkpoints), evaluate every row (cached),
write the report. ``compare`` (one budget, the paper's Table 2) and ``frontier`` (several) both run this."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sepo_ray.protocol import TUNING_SEED

from .plan import Entry, budget_iterations, checkpoint_every, final_kl, standard_errors, train_seconds
from .rows import (
    best_of_n_row,
    file_hash,
    generator_hash,
    load_cached_row,
    row_fingerprint,
    sample_row,
    save_cached_row,
    svdd_row,
)
from .runs import checkpoint_generator, run_dir, train_runs, wanted_settings


@dataclass(frozen=True)
class Tuning:
    """Equal tuning: ``trials`` Tune trials per entry (0: none), the same ``search_seed``, ASHA on ``calls``
    fine-tuning oracle calls per trial (the horizon the method is tuned for; None: the experiment's largest
    budget), selection on the validation signal with its realism guard ``realism_min`` on ``samples`` sequences,
    every trial trained with the tuning seed ``seed`` (never a reported seed)."""

    trials: int = 0
    search_seed: int = 0
    calls: int | None = None
    realism_min: float = 0.0
    samples: int = 128
    num_cpus: int | None = None
    seed: int = TUNING_SEED


@dataclass
class Experiment:
    """Everything an experiment's rows need, checked by :func:`prepare`."""

    task: object
    output: Path
    entries: dict[str, Entry]
    budgets: list[int]
    seeds: list[int]
    design_size: int
    design_batches: int
    steps: int
    scorer: object
    score: str
    realism: str | None
    realism_min: float
    tuning: Tuning
    common: dict = field(default_factory=dict)  # --set for every run
    own: dict = field(default_factory=dict)  # ENTRY.KEY=VALUE
    chosen: dict = field(default_factory=dict)  # --configs FILE
    references: bool = True
    elbo_steps: int | None = None
    svdd_candidates: int = 4
    svdd_temperature: float = 0.0
    num_cpus: int | None = None
    tuned: dict = field(default_factory=dict)  # entry -> tuned values
    batches: dict = field(default_factory=dict)  # entry -> sequences per iteration
    needed: dict = field(default_factory=dict)  # entry -> checkpoint iterations
    records: dict = field(default_factory=dict)  # entry -> {seed: record}
    svdd_calls: dict = field(default_factory=dict)
    designs: list = field(default_factory=list)  # K: the numbers of designs the report prices
    tuning_calls: dict = field(default_factory=dict)  # entry -> oracle calls its tuning spent

    @property
    def trained(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.trains]

    @property
    def num(self) -> int:
        """Sequences per seed and row."""
        return self.design_size * self.design_batches

    @property
    def reward(self) -> str:
        """The benchmark reward: what every fine-tuning run and every selection spends its calls on."""
        return self.task.default_reward

    @property
    def timeout_s(self) -> float:
        from sepo_ray.settings import SETTINGS

        return float(self.common.get("reward_timeout_s", SETTINGS["reward_timeout_s"].default))

    def settings(self) -> dict:
        """What every row's numbers depend on besides its own source (part of each row's fingerprint)."""
        return {
            "seeds": self.seeds,
            "design_size": self.design_size,
            "design_batches": self.design_batches,
            "steps": self.steps,
            "elbo_steps": getattr(self.scorer, "elbo_steps", self.elbo_steps),
            "artifacts": self.task.evaluation_fingerprint(),
            "reward": self.reward,
        }

    def label(self, entry: str, budget: int | None) -> str:
        """A row's name in tables: the entry alone at one budget, ``entry@budget`` at several."""
        return entry if budget is None or len(self.budgets) == 1 else f"{entry}@{budget}"

    def cli(self, entry: str) -> dict:
        """An entry's own command-line settings: every run's, then its ``ENTRY.KEY=VALUE`` and ``--configs``."""
        return {**self.common, **self.chosen.get(entry, {}), **self.own.get(entry, {})}

    def run_settings(self, entry: Entry, seed: int):
        return wanted_settings(
            self.task, entry, self.tuned.get(entry.name, {}), self.cli(entry.name), seed, self.every(entry)
        )

    def every(self, entry: Entry) -> int:
        return checkpoint_every(self.needed[entry.name]) if self.needed.get(entry.name) else 1

    def checkpoints(self, entry: str, calls: int) -> tuple[int, dict[int, Path]]:
        """(iteration, {seed: generator file}) of ``entry``'s runs after ``calls`` fine-tuning calls."""
        from sepo_ray.rundir import calls_spent

        it = budget_iterations(calls, self.batches[entry], entry)
        gens = {
            s: checkpoint_generator(self.task, run_dir(self.output, entry, s), self.records[entry][s], it)
            for s in self.seeds
        }
        spent = {s: calls_spent(self.records[entry][s], it) for s in self.seeds}
        if set(spent.values()) != {calls}:
            raise ValueError(f"{entry} at {calls} calls: the runs spent {spent} calls by iteration {it}")
        return it, gens

    # -------------------------------------------------------------------------------------------- rows
    def row_sources(self) -> list[tuple[Entry, int | None, Callable]]:
        """Every row in order, as (entry, budget, source); ``source()`` gives (fingerprint source, row callable
        seed -> sequences, info). Budgets ascend, half budgets included when finetuned_best_of_n needs them (it
        picks its base run by the validation signal, :meth:`validation_of`, never by evaluated rows)."""
        task, num, design, pools = self.task, self.num, self.design_size, self.output / "pools"
        pretrained = {s: "pretrained" for s in self.seeds}
        combo = next((e for e in self.entries.values() if e.method.kind == "finetune+selection"), None)
        plan = []
        for entry in self.entries.values():
            if entry.method.kind == "sampler":
                info = {"calls": {"fine_tuning": 0, "selection": 0}, "config": {}}
                src = {"generator": generator_hash(task, "pretrained")}
                plan.append(
                    (
                        entry,
                        None,
                        lambda src=src, info=info: (src, sample_row(task, pretrained, num, self.steps), info),
                    )
                )
        halves = {b // 2 for b in self.budgets} if combo else set()
        for b in sorted(set(self.budgets) | halves):
            for entry in self.trained:

                def finetuned(entry=entry, b=b):
                    it, gens = self.checkpoints(entry.name, b)
                    settings = self.run_settings(entry, self.seeds[0])
                    config = {
                        k: v
                        for k, v in settings.values.items()
                        if settings.sources[k] not in ("default", "--set")
                    }
                    config = {**config, **self.cli(entry.name), "iterations": it}
                    config.pop("checkpoint_frequency", None)
                    src = {"generators": {str(s): file_hash(g) for s, g in gens.items()}}
                    kl = sum(final_kl(self.records[entry.name][s]["history"], it) for s in self.seeds) / len(
                        self.seeds
                    )
                    info = {
                        "iterations": it,
                        "calls": {"fine_tuning": b, "selection": 0},
                        "config": config,
                        "kl": kl,
                    }
                    return src, sample_row(task, gens, num, self.steps), info

                plan.append((entry, b, finetuned))
            if b not in self.budgets:
                continue
            for entry in self.entries.values():
                if entry.method.kind == "selection" and entry.method.name == "best_of_n":

                    def best_of_n(n=b // design):
                        info = {"calls": {"fine_tuning": 0, "selection": n * design}, "config": {"n": n}}
                        src = {"generator": generator_hash(task, "pretrained"), "n": n}
                        row = best_of_n_row(
                            task, pretrained, n, num, self.steps, self.reward, pools, self.timeout_s
                        )
                        return src, row, info

                    plan.append((entry, b, best_of_n))
                elif entry.method.kind == "selection":
                    plan.append((entry, b, self._svdd_source(b)))
            if combo is not None:
                plan.append((combo, b, self._combo_source(b)))
        return plan

    def _svdd_source(self, b: int) -> Callable:
        from sepo_ray.diffusion.guidance import svdd_plan

        def svdd(schedule=svdd_plan(b // self.design_size, self.steps, self.svdd_candidates)):
            cand, ks = schedule
            cfg = {"candidates": cand, "scored_steps": list(ks), "temperature": self.svdd_temperature,
                   "predict": "argmax"}  # fmt: skip
            info = {
                "calls": {"fine_tuning": 0, "selection": cand * len(ks) * self.design_size},
                "config": cfg,
            }
            src = {"generator": generator_hash(self.task, "pretrained"), **cfg}
            log = self.svdd_calls.setdefault(b, {})
            row = svdd_row(
                self.task, {s: "pretrained" for s in self.seeds}, schedule, self.design_size, self.design_batches,
                self.steps, self.svdd_temperature, self.reward, b, log, self.timeout_s,
            )  # fmt: skip
            return src, row, info

        return svdd

    def validation_of(self, entry: str, calls: int) -> dict:
        """The validation signal of ``entry``'s runs after ``calls`` calls: {validation_score, validation_realism}
        means over seeds of :meth:`Task.validation` on ``tuning.samples`` samples each, drawn with the validation
        seed (cached under DIR/rows/ by the generators' hashes). What a selection among runs may read."""
        from sepo_ray.evaluation import load_generator

        from .rows import load_json_cache, save_json_cache

        _, gens = self.checkpoints(entry, calls)
        n = self.tuning.samples
        key = {"validation": entry, "calls": calls, "samples": n, "steps": self.steps,
               "generators": {str(s): file_hash(g) for s, g in gens.items()}}  # fmt: skip
        path = self.output / "rows" / f"validation_{entry}_{calls}.json"
        cached = load_json_cache(path, key)
        if cached is not None:
            return cached
        per_seed = [
            self.task.validate_model(load_generator(self.task, g), n, self.steps) for g in gens.values()
        ]
        keys = per_seed[0].keys() if per_seed and per_seed[0] else ()
        out = {k: sum(v[k] for v in per_seed) / len(per_seed) for k in keys}
        save_json_cache(path, key, out)
        return out

    def _combo_source(self, b: int) -> Callable:
        def finetuned_best_of_n():
            half, n = b // 2, (b - b // 2) // self.design_size
            trained = [e.name for e in self.trained]
            signals = {m: self.validation_of(m, half) for m in trained}  # never an evaluation row
            floor = float(self.task.validation_realism_min)
            ok = [m for m in trained if signals[m].get("validation_realism", floor) >= floor] or trained
            m = max(ok, key=lambda name: signals[name].get("validation_score", 0.0))
            it, gens = self.checkpoints(m, half)
            src = {"generators": {str(s): file_hash(g) for s, g in gens.items()}, "n": n, "base": m}
            picked = (
                len(trained) * self.tuning.samples
            )  # the validation samples it scored (per seed's pipeline)
            info = {"calls": {"fine_tuning": half, "selection": n * self.design_size},
                    "config": {"base_entry": m, "base_calls": half, "n": n, "iterations": it,
                               "chosen_by": "validation", "validation": signals},
                    # it trained every candidate to half the budget and scored their validation samples to pick one
                    "cost": {"train": half * len(trained) + picked, "per_design": n}}  # fmt: skip
            row = best_of_n_row(
                self.task, gens, n, self.num, self.steps, self.reward, self.output / "pools", self.timeout_s
            )
            return src, row, info

        return finetuned_best_of_n

    def evaluate(self, i: int, total: int, entry: Entry, budget: int | None, source) -> tuple[dict, object]:
        """One row (cached under DIR/rows/ by its fingerprint) and its samples, with progress lines."""
        from sepo_ray import evaluation

        name = entry.name if budget is None else f"{entry.name}_{budget}"
        cache = self.output / "rows"
        src, row_fn, info = source()
        fingerprint = row_fingerprint(name, src, self.settings())
        cached = load_cached_row(cache, name, fingerprint)
        t0, where = time.time(), f"[{i}/{total}] {entry.name}" + (f" at {budget} calls" if budget else "")
        if cached is not None:
            metrics, samples = cached
            print(f"{where}: reusing {cache / name}.json", flush=True)
        else:
            print(f"{where}: evaluating {len(self.seeds)} x {self.num} sequences", flush=True)
            out, samples = evaluation.evaluate_rows(
                self.task, {name: row_fn}, seeds=self.seeds, num_samples=self.num, steps=self.steps,
                scorer=self.scorer,
            )  # fmt: skip
            if entry.method.name == "svdd":  # the calls counted while sampling, per seed and design batch
                counted = self.svdd_calls[budget]
                info["calls"]["selection"] = max(max(v) for v in counted.values())
                info["counted_calls"] = {str(s): v for s, v in counted.items()}
            metrics = {"_info": info, **out[name]}
            save_cached_row(cache, name, fingerprint, metrics, samples)
        info = metrics.get("_info", info)  # a cached row keeps what it counted when it was evaluated
        metrics = standard_errors({k: v for k, v in metrics.items() if k != "_info"}, len(self.seeds))
        label = self.label(entry.name, budget)
        row = {"name": label, "entry": entry.name, "method": entry.method.name, "budget_calls": budget or 0, **info,
               "cost": info.get("cost") or entry.method.cost(budget or 0, self.design_size),
               "tuning_calls": self.tuning_calls.get(entry.name, 0), "metrics": metrics,
               "seeds": self.seeds, "sequences_per_seed": self.num}  # fmt: skip
        if entry.method.trains and "iterations" in info:  # each seed's run to this budget, measured
            history = {s: self.records[entry.name][s]["history"] for s in self.seeds}
            row["train_seconds"] = {str(s): train_seconds(h, info["iterations"]) for s, h in history.items()}
        shown = f"{self.score} {metrics[self.score]['mean']:.3f} ± {metrics[self.score]['se']:.3f}"
        if self.realism:
            shown += f", {self.realism} {metrics[self.realism]['mean']:.3f}"
        print(f"{where}: {shown} ({time.time() - t0:.0f} s)", flush=True)
        return row, samples.assign(row=label)

    def reference_rows(self) -> tuple[list[dict], list]:
        """The task's rows of real data (no calls), evaluated like the others and cached."""
        from sepo_ray import evaluation

        cache, rows, frames = self.output / "rows", [], []
        if not self.references:
            return rows, frames
        for ref, draw in self.task.reference_rows().items():
            fp = row_fingerprint(ref, {"reference": ref, "num": self.num}, self.settings())
            cached = load_cached_row(cache, ref, fp)
            if cached is None:
                metrics, samples = evaluation.evaluate_rows(
                    self.task, {ref: evaluation.reference_row(draw, self.num)}, seeds=self.seeds,
                    num_samples=self.num, steps=self.steps, scorer=self.scorer, progress=False,
                )  # fmt: skip
                save_cached_row(cache, ref, fp, metrics[ref], samples)
                cached = (metrics[ref], samples)
            metrics = standard_errors(cached[0], len(self.seeds))
            rows.append({"name": ref, "entry": ref, "method": ref, "budget_calls": None, "metrics": metrics,
                         "seeds": self.seeds})  # fmt: skip
            frames.append(cached[1].assign(row=ref))
        return rows, frames

    # ------------------------------------------------------------------------------------------- steps
    def tune(self) -> dict:
        """Equal tuning of every fine-tuning entry (``DIR/tuning.json``); sets :attr:`tuned`."""
        from .tuning import tune_entries

        if not self.trained:
            return {}
        result = tune_entries(
            self.task, self.output, self.trained, self.common, self.own, self.chosen, self.tuning
        )
        self.tuned = {name: t["config"] for name, t in result.items()}
        self.tuning_calls = {name: int(t.get("calls", 0)) for name, t in result.items()}
        for entry in self.entries.values():  # it picks among every tuned fine-tuning entry
            if entry.method.kind == "finetune+selection":
                self.tuning_calls[entry.name] = sum(self.tuning_calls.values())
        return result

    def train(self) -> None:
        """Every fine-tuning entry's runs, one per seed, to the largest budget."""
        for entry in self.trained:
            cli = self.cli(entry.name)
            self.records[entry.name] = train_runs(
                self.task, self.output, entry, self.tuned.get(entry.name, {}), cli, self.seeds,
                self.needed[entry.name][-1], self.every(entry), self.num_cpus,
            )  # fmt: skip

    def check_generators(self) -> None:
        """Every checkpoint a row will sample from holds finite weights (ValueError naming the first that does not),
        before any row is evaluated."""
        from sepo_ray.evaluation import nonfinite_weights

        for entry in self.trained:
            for it in self.needed[entry.name]:
                for seed in self.seeds:
                    folder = run_dir(self.output, entry.name, seed)
                    path = checkpoint_generator(self.task, folder, self.records[entry.name][seed], it)
                    bad = nonfinite_weights(self.task.build_denoiser(path))
                    if bad is not None:
                        raise ValueError(
                            f"{entry.name} at iteration {it}, seed {seed}: generator {path} has non-finite weights "
                            f"({bad[0]}: {bad[1]} NaN/inf); nothing was evaluated"
                        )

    def describe(self) -> str:
        return (
            f"experiment on {self.task.name}: rows {list(self.entries)}, budgets {self.budgets} calls per design "
            f"batch of {self.design_size}, {self.num} sequences x seeds {self.seeds} per row, T = {self.steps}"
            + "".join(f"; {e.name}: {self.batches[e.name]} sequences/iteration" for e in self.trained)
        )
