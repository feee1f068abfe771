"""Equal tuning: the same Ray Tune search (``sepo_ray.sweep``) over each fine-tuning method's own alpha and lr."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from sepo_ray.settings import parse_overrides

from .plan import FINETUNE, TUNE_SPACE

#: the tuning's clock: sequences sampled, one fine-tuning-oracle call each (the frontier's cost axis)
TUNE_CLOCK = "num_env_steps_sampled_lifetime"


def tuning_sweep(
    task, method: str, fixed: Mapping, searched: Sequence[str], trials: int, seed: int, max_calls: int,
    realism_min: float, heldout_samples: int, num_cpus: int | None,
):  # fmt: skip
    """The same Ray Tune search for every method (a :class:`~sepo_ray.sweep.SweepSpec`): ``searched`` fields
    log-uniform in :data:`TUNE_SPACE`, ``trials`` samples with search seed ``seed``, ASHA on the oracle calls a
    trial has spent up to ``max_calls`` (rungs at a quarter and a half), best by the held-out score among trials
    whose held-out realism stays >= ``realism_min`` (0: no guard). Calls, not seconds: the frontier's axis, and
    a clock that neither machine load nor a method's cost per call (trajectory re-scores T steps) changes."""
    from sepo_ray.sweep import parse_sweep_spec

    base = {
        **task.benchmark_settings(),
        **fixed,
        **parse_overrides(FINETUNE[method]),
        "task": task.name,
        "heldout_eval_interval": 2,
        "heldout_samples": heldout_samples,
        "num_env_runners": 0,
        "num_learners": 0,
        "seed": 0,
    }
    # a searched field is not also fixed (DNA's run defaults fix kl_alpha)
    base = {k: v for k, v in base.items() if k not in searched}
    concurrent = max(1, min(2, num_cpus or 2))
    raw = {
        "name": f"frontier_{method}",
        "description": f"equal tuning of {method} for the frontier",
        "select_min": {"sepo/heldout_realism": realism_min} if realism_min > 0 else {},
        "scheduler": {"type": "asha", "time_attr": TUNE_CLOCK, "max_t": max_calls,
                      "grace_period": max_calls / 4, "reduction_factor": 2, "brackets": 1},
        "num_samples": trials,
        "max_concurrent_trials": concurrent,
        "search_seed": seed,
        "resources": {"num_cpus": num_cpus} if num_cpus else {},
        "checkpoint": {"frequency": 0, "num_to_keep": 1, "at_end": True},
        "max_failures": 1,
        "base_config": base,
        "search_space": {f: {"loguniform": list(TUNE_SPACE[f])} for f in searched},
    }  # fmt: skip
    return parse_sweep_spec(raw)


def tune_methods(
    task, out: Path, methods: Sequence[str], common: dict, own: dict, chosen: dict, args
) -> dict:
    """Each method's chosen values of :data:`TUNE_SPACE` ({method: {"config", "source", ...}}), tuned with the
    same search where not fixed; reuses DIR/tuning.json entries of the same search, writes it back."""
    from sepo_ray.runtime import write_json
    from sepo_ray.sweep import SweepError, run_sweep

    path = out / "tuning.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    result = {}
    for method in methods:
        fixed = {**common, **chosen.get(method, {}), **own.get(method, {})}
        searched = [f for f in TUNE_SPACE if f not in fixed]
        search = {
            "trials": args.tune_trials, "search_seed": args.tune_seed, "max_calls": args.tune_calls,
            "realism_min": args.tune_realism, "space": {f: list(TUNE_SPACE[f]) for f in searched},
            "heldout_samples": args.tune_samples,
            "fixed": dict(fixed),
        }  # fmt: skip
        if not searched or args.tune_trials == 0:
            result[method] = {
                "config": {},
                "source": "fixed" if searched == [] else "defaults",
                "search": None,
            }
            continue
        previous = saved.get(method)
        if previous is not None and previous.get("search") == search:
            print(f"== tuning {method}: reusing {path} (same search)", flush=True)
            result[method] = previous
            continue
        sweep_dir = out / "tuning" / method
        spec = tuning_sweep(
            task, method, fixed, searched, args.tune_trials, args.tune_seed, args.tune_calls, args.tune_realism,
            args.tune_samples, args.num_cpus,
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
        report = run_sweep(spec, sweep_dir, resume=resume, verbose=1)
        best = report.get("best")
        entry = {"search": search, "sweep": report_path.relative_to(out).as_posix()}
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
