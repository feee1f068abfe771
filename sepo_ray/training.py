"""The one training loop: fine-tune a task's generator into a run folder, for ``run``, ``compare`` and ``frontier``.

:func:`run_settings` resolves a run's settings (a resumed run's from its record) and :func:`train` runs it:
it writes ``result.json`` after every iteration (history, settings and their sources, checkpoint paths relative
to the folder) and checkpoints every ``checkpoint_frequency`` iterations; a resumed run continues from its last
checkpoint with its own settings and random-number states. Every check that can fail runs before Ray starts; a
run that fails before its first iteration leaves no run folder behind.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sepo_ray.curves import CurveWriter, history_row, plot_curves
from sepo_ray.progress import eta_text
from sepo_ray.resolve import Settings, changed_on_resume, generator_spec, resolve_settings
from sepo_ray.rundir import (
    RECORD,
    check_output,
    checkpoint_path,
    recorded_settings,
    restore_last_good,
    save_checkpoint,
)

#: sampling seed of the before/after evaluation (the same samples for every run of a task)
EVAL_SEED = 1234


class DivergedError(RuntimeError):
    """A run met non-finite losses, gradients or weights and stopped; its last checkpoint is intact."""


def run_settings(
    task,
    output: str | Path,
    resume: bool = False,
    cli: Mapping[str, Any] | None = None,
    cli_flags: Mapping[str, str] | None = None,
    **layers,
) -> tuple[Settings, dict | None]:
    """(the run's resolved settings, the record of the run to resume or None), checked before anything starts:
    the output folder (:func:`sepo_ray.rundir.check_output`), every value, the reward spec and the task's files.
    ``layers``: ``benchmark``, ``method``, ``tuned``, ``file`` of :func:`~sepo_ray.resolve.resolve_settings`."""
    from sepo_ray.oracles.pool import check_reward_spec

    previous = check_output(Path(output), resume)
    if previous is not None:
        if previous.get("task", task.name) != task.name:
            raise ValueError(
                f"--resume: {output} holds a run of task {previous['task']!r}, not {task.name!r}"
            )
        values, sources = recorded_settings(previous)
        settings = resolve_settings(
            task, cli=cli, cli_flags=cli_flags, recorded=values, recorded_sources=sources
        )
    else:
        settings = resolve_settings(task, cli=cli, cli_flags=cli_flags, **layers)
    check_reward_spec(settings["reward"])
    task.check_files(generator_spec(settings.values))
    return settings, previous


def evaluate_model(model, task, num_samples: int, settings: Settings, user_reward: str | None) -> dict:
    """The task's evaluation table of ``num_samples`` fresh samples (seed 1234), plus ``user_reward_mean`` /
    ``user_reward_median`` for a reward the user named; every reward call obeys ``reward_timeout_s``."""
    import torch

    from sepo_ray.oracles.pool import resolve_reward
    from sepo_ray.progress import progress

    g = torch.Generator().manual_seed(EVAL_SEED)
    steps = int(settings["denoise_steps"])
    with progress(steps * -(-num_samples // 128), "sampling") as bar:
        seqs = task.sample(
            model,
            num_samples,
            steps,
            generator=g,
            corrector_steps=int(settings["corrector_steps"]),
            batch_size=128,
            progress=lambda done, total: bar.update(done - bar.n),
        )
    out = task.scorer().metrics(seqs)
    if user_reward:
        r = resolve_reward(user_reward, timeout_s=float(settings["reward_timeout_s"]))(seqs)
        out.update(user_reward_mean=float(r.mean()), user_reward_median=float(np.median(r)))
    return out


def print_table(before: dict, after: dict) -> None:
    print(f"\n{'metric':<24}{'before':>12}{'after':>12}{'change':>12}")
    for k in (k for k in before if k in after):
        b, a = before[k], after[k]
        print(f"{k:<24}{b:>12.4f}{a:>12.4f}{a - b:>+12.4f}")


def train(
    task,
    output: str | Path,
    iterations: int,
    settings: Settings,
    previous: dict | None = None,
    eval_samples: int = 256,
    evaluate: bool = True,
    num_cpus: int | None = None,
) -> dict:
    """Fine-tune ``task`` with ``settings`` (from :func:`run_settings`) into ``output``; returns the record.

    ``previous``: the record of the run to continue (``iterations`` may extend it). Raises
    :class:`~sepo_ray.oracles.pool.RewardError` when the reward fails and :class:`DivergedError` on non-finite
    losses, gradients or weights (what was written stays; the last checkpoint stays the final one).
    """
    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.rllib.learner import DivergenceError
    from sepo_ray.runtime import init_ray, write_json

    out = Path(output)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / RECORD
    user_reward = settings["reward"] if settings.sources["reward"].startswith("--") else None
    init_ray(num_cpus)
    config = SEPOConfig.from_settings(settings)
    print(
        f"SEPO on task {task.name!r}: L={task.length}, B*G={config.batch_sequences} sequences/iteration "
        f"({config.prompts_per_batch} prompts x {config.group_size}), T={config.denoise_steps}, "
        f"M={config.snis_samples}, K positions={config.neighbour_positions}, eps={config.clip_eps}, "
        f"alpha={config.kl_alpha}, lr={config.lr}, epochs={config.num_epochs}, reward={config.reward}",
        flush=True,
    )
    record = previous or {
        "task": task.name,
        "settings": dict(settings.values),
        "sources": dict(settings.sources),
        "history": [],
        "checkpoints": [],
        "final_checkpoint": None,
    }
    algo, curves, durations = None, None, []
    try:
        algo = config.build_algo()
        if previous is not None:
            restored = restore_last_good(algo, out, record)
            done = algo.iteration if restored is not None else 0
            record["history"] = [h for h in record["history"] if h["iteration"] <= done]
            kept = [c for c in record["checkpoints"] if int(Path(c).name.removeprefix("iter_")) <= done]
            record["checkpoints"], record["final_checkpoint"] = kept, (kept[-1] if kept else None)
            record["settings"], record["sources"] = dict(settings.values), dict(settings.sources)
            changed = changed_on_resume(settings)
            resume = {"at_iteration": done, "changed": changed}
            if settings[
                "max_staleness"
            ]:  # finished or in-flight samples no update used: regenerated, said so
                resume["async_samples_regenerated"] = int(algo.restored_pending)
            record.setdefault("resumes", []).append(resume)
            print(f"resumed from {restored or 'the start'} at iteration {done}", flush=True)
            if changed:
                print(f"settings changed on resume (recorded in {RECORD}): {changed}", flush=True)
        if evaluate and "before" not in record:
            record["evaluation"] = {"samples": eval_samples, "sampling_seed": EVAL_SEED,
                                    "steps": int(settings["denoise_steps"])}  # fmt: skip
            print(f"before: the pretrained generator: metrics of {eval_samples} samples ...", flush=True)
            record["before"] = evaluate_model(
                algo.current_denoiser(), task, eval_samples, settings, user_reward
            )
            write_json(result_path, record)
        while algo.iteration < iterations:
            t0 = time.time()
            try:
                result = algo.train()
            except Exception as e:
                cause = _divergence(e, DivergenceError)
                if cause is None:
                    raise
                last = record["final_checkpoint"]
                raise DivergedError(
                    f"iteration {algo.iteration + 1} diverged: {cause}; last good checkpoint "
                    f"{out / last if last else 'none yet'} (kept as the final one; lower lr or raise kl_alpha)"
                ) from None
            row = history_row(result, algo.iteration, time.time() - t0)
            record["history"].append(row)
            durations.append(row["time_s"])
            _print_row(row, iterations, config.batch_sequences, sum(durations) / len(durations))
            curves = curves or CurveWriter(out)  # TensorBoard: `tensorboard --logdir` on the run folder
            curves.log(row)
            if algo.iteration % config.checkpoint_frequency == 0 or algo.iteration == iterations:
                record["checkpoints"].append(save_checkpoint(algo, out))
                record["final_checkpoint"] = record["checkpoints"][-1]
            write_json(result_path, record)
        if evaluate:
            print(f"after: the fine-tuned generator: metrics of {eval_samples} samples ...", flush=True)
            record["after"] = evaluate_model(
                algo.current_denoiser(), task, eval_samples, settings, user_reward
            )
            write_json(result_path, record)
            print_table(record["before"], record["after"])
    except BaseException:
        if previous is None and not record["history"]:
            _remove_unstarted(out, created)  # nothing to resume: leave no run folder behind
        else:
            write_json(result_path, record)
        raise
    finally:
        if curves is not None:
            curves.close()
        if record["history"] and out.is_dir():
            plot_curves(record["history"], out / "curves.png", f"{task.name}: {out.name}")
        if algo is not None:
            algo.stop()
    return record


def _print_row(row: dict, iterations: int, batch: int, mean_s: float) -> None:
    """One progress line per iteration: rewards, KL, clip fraction, the oracle calls spent of the run's budget, its
    time and the time left (mean iteration time of this process x iterations left)."""
    heldout = ", ".join(
        f"{k.removeprefix('heldout_')} {v:.3f}" for k, v in row.items() if k.startswith("heldout_")
    )
    calls = row.get("oracle_calls", row["iteration"] * batch)
    left = iterations - row["iteration"]
    print(
        f"iter {row['iteration']:>3}/{iterations} | calls {calls}/{iterations * batch} | reward mean "
        f"{row['reward_mean']:.4f} median {row['reward_median']:.4f} | kl {row['kl']:.4f} | clip "
        f"{row['clip_frac']:.3f} | {row['time_s']:.1f} s"
        + (f" | held-out {heldout}" if heldout else "")
        + (f" | ETA {eta_text(left * mean_s)}" if left else ""),
        flush=True,
    )


def _remove_unstarted(out: Path, created: bool) -> None:
    """Remove what a run that never finished an iteration wrote: its record and checkpoint folder, and the
    run folder itself when this run created it and nothing else is in it."""
    for name in (RECORD, RECORD + ".tmp"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _divergence(error: BaseException, kind: type) -> BaseException | None:
    """The divergence error behind ``error`` (raised here, or inside a Ray actor and wrapped), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, kind):
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


__all__ = ["DivergedError", "checkpoint_path", "evaluate_model", "run_settings", "train"]
