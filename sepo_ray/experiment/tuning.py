"""Equal tuning: the same Ray Tune search (``sepo_ray.sweeps``) over each fine-tuning entry's tunable fields
(:attr:`sepo_ray.methods.Method.tunable`), on the oracle-call clock."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

#: the tuning's clock: sequences sampled, one fine-tuning-oracle call each (the frontier's cost axis)
TUNE_CLOCK = "num_env_steps_sampled_lifetime"


def charged_calls(report: Mapping, validation_samples: int | None = None) -> int:
    """The oracle calls a tuning sweep spent, every trial's: the sequences it sampled (one call each, ASHA-stopped
    trials included) plus the samples its validation signal scored. What the cost axis charges the method. A
    sweep.json whose trials lack the validation count (written before it was kept) is charged
    ``validation_samples`` per validation report."""
    from sepo_ray.sweeps.report import VALIDATION_CALLS

    total = 0
    for row in report.get("trials", []):
        m = row.get("metrics", {})
        validation = m.get(VALIDATION_CALLS)
        if validation is None and validation_samples:
            validation = validation_samples * int(
                (m.get("sepo/validation_score") or {}).get("num_reports") or 0
            )
        total += int(m.get(TUNE_CLOCK) or 0) + int(validation or 0)
    return total


def validation_interval(task, entry, fixed: Mapping, max_calls: int) -> int:
    """Iterations between a tuning trial's validation checks: those of a quarter of the horizon (ASHA's first rung),
    dividing the horizon's iterations, so that a trial is validated at each rung and at its end. Nothing reads the
    validation signal in between (ASHA ranks on the training reward, the choice on the last validation), and each
    check costs ``validation_samples`` oracle calls charged to the method: every 2 iterations, a DNA trial's checks
    cost twice its training calls."""
    import math

    from sepo_ray.resolve import resolve_settings

    settings = resolve_settings(task, benchmark=True, method=entry.settings, cli=dict(fixed))
    iterations = max(1, max_calls // (int(settings["prompts_per_batch"]) * int(settings["group_size"])))
    return math.gcd(iterations, max(1, iterations // 4))


def tuning_sweep(
    task, entry, fixed: Mapping, searched: Sequence[str], trials: int, search_seed: int, max_calls: int,
    realism_min: float, validation_samples: int, num_cpus: int | None, seed: int = 1000,
):  # fmt: skip
    """The same Ray Tune search for every method (a :class:`~sepo_ray.sweeps.SweepSpec`): ``searched`` fields
    log-uniform in the method's ``tunable`` ranges, ``trials`` samples with search seed ``search_seed``, ASHA on the oracle calls a
    trial has spent up to ``max_calls`` (rungs at a quarter and a half; validated at each rung and at the end,
    :func:`validation_interval`), best by the last validation score among
    trials whose validation realism stays >= ``realism_min`` (0: no guard), never an evaluation signal; every trial
    trains with ``seed`` (a tuning seed, never a reported one); ``entry`` (:class:`~.plan.Entry`). Calls, not
    seconds: the frontier's axis, and a clock that neither machine load nor a method's cost per call (trajectory
    re-scores T steps) changes."""
    from sepo_ray.sweeps import parse_sweep_spec

    base = {
        **task.benchmark_reward_pin(),
        **fixed,
        **entry.settings,
        "task": task.spec or task.name,
        "validation_interval": validation_interval(task, entry, fixed, max_calls),
        "validation_samples": validation_samples,
        "num_env_runners": 0,
        "num_learners": 0,
        "seed": seed,
    }
    base = {k: v for k, v in base.items() if k not in searched}
    # trials at once: as many as the CPUs hold at the trial's torch threads (0: every CPU of the machine, the
    # driver's own count, so that a trial reproduces a reported run); more would thrash (measured on 2 cores, DNA
    # trajectory trials with validation: two 2-thread trials at once took 127 s per iteration each, one alone 31 s)
    from sepo_ray.resolve import machine_threads

    threads = int(base.get("torch_threads") or 0) or machine_threads()
    concurrent = max(1, min(trials, (num_cpus or machine_threads()) // threads))
    raw = {
        "name": f"tune_{entry.name}",
        "description": f"equal tuning of {entry.name}",
        "select_min": {"sepo/validation_realism": realism_min} if realism_min > 0 else {},
        "scheduler": {"type": "asha", "time_attr": TUNE_CLOCK, "max_t": max_calls,
                      "grace_period": max_calls / 4, "reduction_factor": 2, "brackets": 1},
        "num_samples": trials,
        "max_concurrent_trials": concurrent,
        "search_seed": search_seed,
        "resources": {"num_cpus": num_cpus} if num_cpus else {},
        "checkpoint": {"frequency": 0, "num_to_keep": 1, "at_end": True},
        "max_failures": 1,
        "base_config": base,
        "search_space": {f: {"loguniform": list(entry.method.tunable[f])} for f in searched},
    }  # fmt: skip
    return parse_sweep_spec(raw)


def tune_entries(task, out: Path, entries: Sequence, common: dict, own: dict, chosen: dict, tuning) -> dict:
    """Each entry's chosen values of its tunable fields ({entry: {"config", "source", ...}}), tuned with the same
    search where not fixed (``tuning``: trials, search_seed, calls, realism_min, samples, num_cpus); reuses
    DIR/tuning.json entries of the same search, writes it back."""
    from sepo_ray.runtime import write_json
    from sepo_ray.sweeps import SweepError, run_sweep

    path = out / "tuning.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    result = {}
    for entry in entries:
        method = entry.name
        fixed = {**common, **chosen.get(method, {}), **own.get(method, {})}
        searched = [f for f in entry.method.tunable if f not in fixed and f not in entry.settings]
        search = {
            "trials": tuning.trials, "search_seed": tuning.search_seed, "max_calls": tuning.calls,
            "realism_min": tuning.realism_min, "space": {f: list(entry.method.tunable[f]) for f in searched},
            "validation_samples": tuning.samples,
            "validation_interval": validation_interval(task, entry, fixed, tuning.calls),
            "seed": tuning.seed,
            "fixed": dict(fixed),
        }  # fmt: skip
        if not searched or tuning.trials == 0:
            result[method] = {
                "config": {},
                "source": "fixed" if searched == [] else "defaults",
                "search": None,
                "calls": 0,
            }
            continue
        previous = saved.get(method)
        if previous is not None and previous.get("search") == search:
            print(f"== tuning {method}: reusing {path} (same search)", flush=True)
            sweep_file = out / previous.get("sweep", "")
            if previous.get("sweep") and sweep_file.is_file():  # charged as today's accounting counts
                previous["calls"] = charged_calls(json.loads(sweep_file.read_text()), tuning.samples)
                write_json(path, saved)
            result[method] = previous
            continue
        sweep_dir = out / "tuning" / method
        spec = tuning_sweep(
            task, entry, fixed, searched, tuning.trials, tuning.search_seed, tuning.calls, tuning.realism_min,
            tuning.samples, tuning.num_cpus, tuning.seed,
        )  # fmt: skip
        report_path = sweep_dir / "sweep.json"
        if sweep_dir.exists() and previous is not None:  # a finished sweep of another search stays
            raise SweepError(
                f"{sweep_dir} holds a tuning sweep of another search ({previous.get('search')}); use another "
                "--output or move it aside"
            )
        print(f"== tuning {method}: {spec.describe()}", flush=True)
        from ray import tune

        resume = tune.Tuner.can_restore(str((sweep_dir / spec.name).resolve()))
        hint = "the same compare / frontier command (it resumes this search)"
        report = run_sweep(spec, sweep_dir, resume=resume, verbose=1, resume_hint=hint)
        if report.get("interrupted"):  # a cut search chooses nothing: kept for the same command to resume it
            raise KeyboardInterrupt(f"tuning of {method} stopped by Ctrl-C")
        best = report.get("best")
        entry = {
            "search": search,
            "sweep": report_path.relative_to(out).as_posix(),
            "calls": charged_calls(report, tuning.samples),
        }
        if best is None:
            print(f"== tuning {method}: no trial qualified; the defaults stay", flush=True)
            entry.update(config={}, source="defaults (no trial met the guard)")
        else:
            entry.update(
                config={f: best["config"][f] for f in searched},
                source="tune",
                trial=best["trial_id"],
                selected_by=best["selected_by"],
                value=best["value"],
            )
        result[method] = entry
        saved[method] = entry
        write_json(path, saved)
    return result
