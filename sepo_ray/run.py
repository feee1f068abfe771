"""``python -m sepo_ray.run TASK``: fine-tune a task's pretrained generator with SEPO, report before/after metrics.

Joins a running Ray cluster when there is one (``RAY_ADDRESS`` is set, as under ``ray job submit``), else
starts a local one. Writes ``DIR/result.json`` after every iteration (history, config, checkpoint paths relative
to DIR) and checkpoints under ``DIR/checkpoints/``; ``--resume`` continues from the last checkpoint with the history
intact. A failing reward stops the run with an error naming the reward; what was written stays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from sepo_ray.settings import SEPO_SETTINGS, parse_overrides

DEFAULT_ITERATIONS = 16
DEFAULT_TASK = SEPO_SETTINGS["task"].default


def _tasks_epilog() -> str:
    from sepo_ray.tasks import available_tasks, get_task

    lines = ["installed tasks (the entry-point group sepo_ray.tasks; or give module:TaskClass):"]
    for name in available_tasks():
        try:
            lines.append(f"  {name:<12} {get_task(name).description}")
        except ValueError as e:
            lines.append(f"  {name:<12} (broken: {e})")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m sepo_ray.run",
        description=__doc__.splitlines()[0],
        epilog=_tasks_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "task", nargs="?", default=DEFAULT_TASK, help=f"task name (default {DEFAULT_TASK}; see below)"
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="training iterations (total; default: the task's, 16 for most)",
    )
    p.add_argument("--output", default=None, help="output directory (default runs/<task>-<time>)")
    p.add_argument(
        "--reward",
        default=None,
        help="reward 'module:function' or oracle name (default: the task's run defaults' reward, else its oracle)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, repeatable"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="training seed (default 0; a resumed run keeps its own)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its last checkpoint"
    )
    p.add_argument("--eval-samples", type=int, default=256, help="sequences for the before/after metrics")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after metrics")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray runtime (default: all)")
    args = p.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        p.error("--iterations must be >= 1")
    if args.resume and not args.output:
        p.error("--resume needs --output DIR of the run to continue")
    return args


def build_config(task: str, reward: str | None, seed: int, overrides: dict):
    """A validated :class:`SEPOConfig` for ``task`` with ``overrides`` (SEPO or RLlib field names)."""
    from sepo_ray.rllib import SEPO_FIELDS, SEPOConfig
    from sepo_ray.tasks import get_task

    config = SEPOConfig().sepo(task=task).debugging(seed=seed)
    overrides = {**get_task(task).default_settings, **overrides}  # the task's defaults, then the user's
    if reward is not None:  # --reward beats a reward the task's run defaults name
        overrides["reward"] = reward
    sepo_kw = {k: v for k, v in overrides.items() if k in SEPO_FIELDS}
    rllib_kw = {k: v for k, v in overrides.items() if k not in SEPO_FIELDS}
    config.sepo(**sepo_kw)
    for key, value in rllib_kw.items():
        if key.startswith("_") or not hasattr(config, key) or callable(getattr(config, key)):
            raise ValueError(
                f"--set {key}: not a config field; SEPO fields: {', '.join(sorted(SEPO_FIELDS))}; "
                "or any RLlib AlgorithmConfig attribute (lr, num_epochs, num_env_runners, num_learners, ...)"
            )
        setattr(config, key, value)
    config.validate_sepo()
    return config


def evaluate_model(
    model, task, num_samples: int, steps: int, corrector_steps: int, user_reward: str | None
) -> dict:
    """The task's evaluation table of ``num_samples`` fresh samples (seed 1234), plus ``user_reward_mean`` /
    ``user_reward_median`` when a user reward is given."""
    import torch
    from tqdm.auto import tqdm

    from sepo_ray.oracles.pool import resolve_reward

    g = torch.Generator().manual_seed(1234)
    with tqdm(total=steps * -(-num_samples // 128), desc="sampling", unit="step", leave=False) as bar:
        seqs = task.sample(
            model,
            num_samples,
            steps,
            generator=g,
            corrector_steps=corrector_steps,
            batch_size=128,
            progress=lambda done, total: bar.update(done - bar.n),
        )
    out = task.scorer().metrics(seqs)
    if user_reward:
        r = resolve_reward(user_reward)(seqs)
        out.update(user_reward_mean=float(r.mean()), user_reward_median=float(np.median(r)))
    return out


def print_table(before: dict, after: dict) -> None:
    keys = [k for k in before if k in after]
    print(f"\n{'metric':<24}{'before':>12}{'after':>12}{'change':>12}")
    for k in keys:
        b, a = before[k], after[k]
        print(f"{k:<24}{b:>12.4f}{a:>12.4f}{a - b:>+12.4f}")


def save_checkpoint(algo, out: Path) -> str:
    """RLlib checkpoint (to resume) plus the generator as safetensors (to evaluate or share).

    Returns the checkpoint's path relative to the run directory ``out`` (run directories are relocatable).
    """
    import shutil

    from sepo_ray.models import save_model

    path = out / "checkpoints" / f"iter_{algo.iteration:04d}"
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    algo.save_to_path(str(tmp.resolve()))
    model = algo.config.task_spec().export_denoiser(algo.current_denoiser())
    save_model(model, tmp / "generator.safetensors", {"iteration": str(algo.iteration)})
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)  # a checkpoint directory exists only once complete
    return path.relative_to(out).as_posix()


def checkpoint_path(run_dir: str | Path, entry: str) -> Path:
    """A checkpoint named in ``result.json`` (relative to the run directory; absolute in older runs)."""
    path = Path(entry)
    return path if path.is_absolute() else Path(run_dir) / path


def read_record(run_dir: str | Path) -> dict | None:
    """The run's ``result.json``, or None when the directory holds no run; ValueError names a corrupt file."""
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); move it aside to start a new run there") from e


#: Settings a resumed run may change: they decide where and how often things happen, not what is sampled or
#: learned. Any other change would not continue the same run and is refused.
RESUMABLE = frozenset(
    {
        "checkpoint_frequency",
        "heldout_eval_interval",
        "heldout_samples",
        "oracle_actors",
        "oracle_num_gpus",
        "oracle_max_restarts",
        "reward_timeout_s",
        "num_gpus_per_learner",
        "num_gpus_per_env_runner",
    }
)


class DivergedError(RuntimeError):
    """A run met non-finite losses, gradients or weights and stopped; its last checkpoint is intact."""


def trained_reward(record: dict, default_reward: str) -> str:
    """The reward a recorded run trained on: its configuration's (unset: the task's ``default_reward``)."""
    return record.get("config", {}).get("reward") or record.get("reward") or default_reward


def asked_reward(overrides: dict, task) -> str:
    """The reward a run with ``overrides`` trains on: theirs, else the task's run defaults', else its
    ``default_reward``."""
    reward = overrides["reward"] if "reward" in overrides else task.default_settings.get("reward")
    return reward or task.default_reward


def trained_as(record: dict, wanted: dict, task, ignore=frozenset()) -> bool:
    """Whether a recorded run was trained with the settings ``wanted`` (keys in ``ignore`` aside), the reward
    compared as trained on (a run that named none trained on its configuration's, else the task's)."""

    def rest(overrides: dict) -> dict:
        return {k: v for k, v in overrides.items() if k != "reward" and k not in ignore}

    return rest(record.get("overrides", {})) == rest(wanted) and trained_reward(
        record, task.default_reward
    ) == asked_reward(wanted, task)


def _resume_settings(
    previous: dict, overrides: dict, seed: int | None, reward: str | None, default_reward: str
) -> tuple[dict, dict]:
    """(the resumed run's overrides, the changes recorded): refuses a seed, reward or setting that would make
    the resumed run another run."""
    if seed is not None and seed != previous.get("seed"):
        raise ValueError(
            f"--seed {seed}: this run was trained with seed {previous.get('seed')}; a resumed run keeps its seed "
            "(drop --seed, or start a new run elsewhere)"
        )
    was = trained_reward(previous, default_reward)
    if reward is not None and reward != was:
        raise ValueError(
            f"--reward {reward}: this run was trained with reward {was!r}; start a new run to train on another "
            "reward"
        )
    trained = previous["overrides"]

    def before(key: str):
        return was if key == "reward" else trained.get(key, previous["config"].get(key))

    def differs(key: str, value) -> bool:
        return before(key) != ((value or default_reward) if key == "reward" else value)

    changed = {k: v for k, v in overrides.items() if differs(k, v)}
    refused = sorted(k for k in changed if k not in RESUMABLE)
    if refused:
        listed = ", ".join(f"{k}={before(k)!r}" for k in refused)
        raise ValueError(
            f"--set {', '.join(refused)}: this run was trained with {listed}; changing it would not continue the same "
            f"run (start a new run elsewhere; a resume may change only {', '.join(sorted(RESUMABLE))})"
        )
    return {**trained, **changed}, changed


def resumed_settings(previous: dict | None, overrides: dict) -> dict:
    """The settings ``build_config`` gets: a resumed run's recorded configuration (its SEPO fields, lr and
    num_epochs) under ``overrides``, so that a release with other run defaults continues the run as it was
    trained; a new run's ``overrides`` as they are."""
    if previous is None:
        return dict(overrides)
    from sepo_ray.rllib import SEPO_FIELDS

    recorded = {
        k: v for k, v in previous.get("config", {}).items() if k in SEPO_FIELDS or k in ("lr", "num_epochs")
    }
    recorded.pop("task", None)
    return {**recorded, **overrides}


def _restore_last_good(algo, out: Path, record: dict) -> Path | None:
    """Restore the newest readable checkpoint (an unreadable one is reported and skipped); None if none."""
    for entry in reversed(list(record.get("checkpoints", []))):
        path = checkpoint_path(out, entry)
        try:
            if not path.is_dir():
                raise FileNotFoundError("missing")
            algo.restore_from_path(str(path.resolve()))
            return path
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt checkpoint: try the one before
            print(
                f"warning: checkpoint {path} is unreadable ({type(e).__name__}: {e}); trying the previous one"
            )
    if record.get("checkpoints"):
        raise ValueError(f"--resume: none of the checkpoints in {out / 'checkpoints'} can be read")
    return None


def train(
    task: str,
    output: str | Path,
    iterations: int = DEFAULT_ITERATIONS,
    seed: int | None = None,
    overrides: dict | None = None,
    reward: str | None = None,
    resume: bool = False,
    eval_samples: int = 256,
    evaluate: bool = True,
    num_cpus: int | None = None,
) -> dict:
    """Fine-tune ``task`` into the run directory ``output``; returns the run's record (``result.json``).

    Writes ``result.json`` after every iteration (history, config, checkpoints relative to ``output``) and
    checkpoints every ``checkpoint_frequency`` iterations. A new run needs a directory without a run in it;
    ``resume`` continues the run in ``output`` from its last checkpoint with its own settings and random-number
    states (``iterations`` may extend it; see :data:`RESUMABLE` for what may change). Raises ValueError for bad
    input (before Ray starts), :class:`~sepo_ray.oracles.pool.RewardError` when the reward fails and
    :class:`DivergedError` on non-finite losses, gradients or weights (what was written stays, the last
    checkpoint stays the final one).
    """
    from sepo_ray.oracles.pool import check_reward_spec
    from sepo_ray.rllib.learner import DivergenceError
    from sepo_ray.runtime import init_ray, write_json
    from sepo_ray.tasks import get_task

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file, not a directory")
    previous = read_record(out)
    if resume and previous is None:
        raise ValueError(f"--resume: {out} holds no run (no result.json); drop --resume to start one there")
    if not resume and previous is not None:
        raise ValueError(f"{out} holds a run already: continue it with --resume, or choose another --output")
    overrides = dict(overrides or {})
    if "task" in overrides:
        raise ValueError("--set task=...: the task is the command's first argument, not a --set field")
    if reward is not None and "reward" in overrides:
        raise ValueError("--reward and --set reward=: one setting, given twice; give one of them")
    task_obj = get_task(task)
    changed = {}
    if previous is not None:
        if previous.get("task", task) != task:
            raise ValueError(f"--resume: {out} holds a run of task {previous['task']!r}, not {task!r}")
        overrides, changed = _resume_settings(previous, overrides, seed, reward, task_obj.default_reward)
        seed, reward = previous.get("seed"), previous.get("reward")
    seed = 0 if seed is None else seed
    config = build_config(task, reward, seed, resumed_settings(previous, overrides))
    check_reward_spec(config.reward or task_obj.default_reward)
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "result.json"

    init_ray(num_cpus)
    settings = config.sepo_settings()
    print(
        f"SEPO on task {task_obj.name!r}: L={task_obj.length}, B*G={config.batch_sequences} sequences/iteration "
        f"({config.prompts_per_batch} prompts x {config.group_size}), T={config.denoise_steps}, "
        f"M={config.snis_samples}, K positions={config.neighbour_positions}, eps={config.clip_eps}, "
        f"alpha={config.kl_alpha}, lr={config.lr}, epochs={config.num_epochs}, "
        f"reward={config.reward or task_obj.default_reward}",
        flush=True,
    )
    record = previous or {
        "task": task,
        "reward": reward,
        "seed": seed,
        "overrides": overrides,
        "config": {**settings, "lr": config.lr, "num_epochs": config.num_epochs},
        "history": [],
        "checkpoints": [],
        "final_checkpoint": None,
    }
    algo = config.build_algo()

    def current_metrics(what: str) -> dict:
        print(f"{what}: metrics of {eval_samples} samples ...", flush=True)
        return evaluate_model(
            algo.current_denoiser(),
            task_obj,
            eval_samples,
            config.denoise_steps,
            config.corrector_steps,
            reward,
        )

    try:
        if previous is not None:
            restored = _restore_last_good(algo, out, record)
            done = algo.iteration if restored is not None else 0
            record["history"] = [h for h in record["history"] if h["iteration"] <= done]
            kept = [c for c in record["checkpoints"] if int(Path(c).name.removeprefix("iter_")) <= done]
            record["checkpoints"], record["final_checkpoint"] = kept, (kept[-1] if kept else None)
            record["overrides"] = overrides
            record.setdefault("resumes", []).append({"at_iteration": done, "changed": changed})
            print(f"resumed from {restored or 'the start'} at iteration {done}", flush=True)
            if changed:
                print(f"settings changed on resume (recorded in result.json): {changed}", flush=True)
        if evaluate and "before" not in record:
            record["before"] = current_metrics("before: the pretrained generator")
            write_json(result_path, record)
        while algo.iteration < iterations:
            t0 = time.time()
            try:
                result = algo.train()
            except Exception as e:
                cause = _divergence(e, DivergenceError)
                if cause is None:
                    raise
                raise DivergedError(
                    f"iteration {algo.iteration + 1} diverged: {cause}; last good checkpoint "
                    f"{out / record['final_checkpoint'] if record['final_checkpoint'] else 'none yet'} "
                    "(kept as the final one; lower lr or raise kl_alpha)"
                ) from None
            sepo_res = result.get("sepo", {})
            row = {
                "iteration": int(algo.iteration),
                "reward_mean": float(sepo_res.get("reward_mean", np.nan)),
                "reward_median": float(sepo_res.get("reward_median", np.nan)),
                "kl": float(sepo_res.get("kl", np.nan)),
                "clip_frac": float(sepo_res.get("clip_frac", np.nan)),
                "time_s": round(time.time() - t0, 3),
            }
            for key, value in sepo_res.items():
                if key.startswith(("heldout_", "critic_")):  # held-out scores; the critic's loss and fit
                    row[key] = float(value)
            record["history"].append(row)
            heldout = ", ".join(
                f"{k.removeprefix('heldout_')} {v:.3f}" for k, v in row.items() if k.startswith("heldout_")
            )
            print(
                f"iter {row['iteration']:>3}/{iterations} | reward mean {row['reward_mean']:.4f} "
                f"median {row['reward_median']:.4f} | kl {row['kl']:.4f} | clip {row['clip_frac']:.3f} | "
                f"{row['time_s']:.1f} s" + (f" | held-out {heldout}" if heldout else ""),
                flush=True,
            )
            if algo.iteration % config.checkpoint_frequency == 0 or algo.iteration == iterations:
                record["checkpoints"].append(save_checkpoint(algo, out))
                record["final_checkpoint"] = record["checkpoints"][-1]
            write_json(result_path, record)
        if evaluate:
            record["after"] = current_metrics("after: the fine-tuned generator")
            write_json(result_path, record)
            print_table(record["before"], record["after"])
    except BaseException:
        write_json(result_path, record)
        raise
    finally:
        algo.stop()
    return record


def _divergence(error: BaseException, kind: type) -> BaseException | None:
    """The divergence error behind ``error`` (raised here, or inside a Ray actor and wrapped), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, kind):
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    from sepo_ray.oracles.pool import RewardError

    out = Path(args.output or f"runs/{args.task}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        if args.iterations is None:
            from sepo_ray.tasks import get_task

            args.iterations = int(get_task(args.task).default_iterations)
        overrides = parse_overrides(args.set)
        record = train(
            args.task,
            out,
            iterations=args.iterations,
            seed=args.seed,
            overrides=overrides,
            reward=args.reward,
            resume=args.resume,
            eval_samples=args.eval_samples,
            evaluate=not args.no_eval,
            num_cpus=args.num_cpus,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RewardError, DivergedError) as e:
        record = read_record(out) or {}
        last = out / record["final_checkpoint"] if record.get("final_checkpoint") else "none yet"
        print(f"error: {e}\nlast checkpoint (intact): {last}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        record = read_record(out) or {}
        done = record["history"][-1]["iteration"] if record.get("history") else 0
        print(
            f"\ninterrupted after iteration {done}; continue with: python -m sepo_ray.run {args.task} "
            f"--output {out} --resume --iterations {args.iterations}",
            file=sys.stderr,
        )
        return 130
    final = record["final_checkpoint"]
    print(f"\nresult: {out / 'result.json'}\nfinal checkpoint: {out / final if final else None}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
