"""``python -m sepo_ray.run dna``: fine-tune the pretrained generator with SEPO and report before/after metrics.

Joins a running Ray cluster when there is one (``RAY_ADDRESS`` is set, as under ``ray job submit``), else
starts a local one. Writes ``DIR/result.json`` after every iteration (history, config, checkpoint paths) and
checkpoints under ``DIR/checkpoints/``; ``--resume`` continues from the last checkpoint with the history
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
import yaml

DEFAULT_ITERATIONS = 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sepo_ray.run", description=__doc__.splitlines()[0])
    p.add_argument("task", nargs="?", default="dna", help="task name (dna, toy); default dna")
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, help="training iterations (total)")
    p.add_argument("--output", default=None, help="output directory (default runs/<task>-<time>)")
    p.add_argument("--reward", default=None, help="reward 'module:function' (default: the task's oracle)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, repeatable"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --output from its last checkpoint"
    )
    p.add_argument("--eval-samples", type=int, default=256, help="sequences for the before/after metrics")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after metrics")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray runtime (default: all)")
    args = p.parse_args(argv)
    if args.iterations < 1:
        p.error("--iterations must be >= 1")
    if args.resume and not args.output:
        p.error("--resume needs --output DIR of the run to continue")
    return args


def parse_overrides(items: list[str]) -> dict:
    """``["lr=3e-5", "kl_alpha=0.1"]`` -> ``{"lr": 3e-05, "kl_alpha": 0.1}`` (values parsed as YAML scalars)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def build_config(task: str, reward: str | None, seed: int, overrides: dict):
    from sepo_ray.rllib import SEPO_FIELDS, SEPOConfig

    config = SEPOConfig().sepo(task=task, reward=reward).debugging(seed=seed)
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


def init_ray(num_cpus: int | None) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        print(f"joined Ray cluster at {os.environ['RAY_ADDRESS']}", flush=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        print(f"started a local Ray runtime ({ray.cluster_resources().get('CPU', 0):.0f} CPUs)", flush=True)


def write_json(path: Path, obj) -> None:
    """Atomic write: a crash mid-write never leaves a truncated result.json."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return repr(o)


def evaluate_model(
    model, task, num_samples: int, steps: int, corrector_steps: int, user_reward: str | None
) -> dict:
    """Metrics of ``num_samples`` fresh samples (seed 1234): the DNA table for ``dna``, else reward statistics;
    plus ``user_reward_mean`` / ``user_reward_median`` when a user reward is given."""
    import torch

    from sepo_ray import diffusion
    from sepo_ray.oracles.pool import resolve_reward

    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        x = diffusion.sample(
            model,
            num_samples,
            task.length,
            steps,
            corrector_steps=corrector_steps,
            generator=g,
            batch_size=128,
        ).x  # (N, L)
    seqs = task.decode(x)
    if task.name == "dna":
        from sepo_ray.metrics import dna_metrics

        out = dna_metrics(seqs)
    else:
        r = resolve_reward(task.default_reward)(seqs)
        out = {"reward_mean": float(r.mean()), "reward_median": float(np.median(r))}
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
    """RLlib checkpoint (to resume) plus the generator as safetensors (to evaluate or share)."""
    import shutil

    from sepo_ray.models import save_model

    path = out / "checkpoints" / f"iter_{algo.iteration:04d}"
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    algo.save_to_path(str(tmp.resolve()))
    save_model(algo.current_denoiser(), tmp / "generator.safetensors", {"iteration": str(algo.iteration)})
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)  # a checkpoint directory exists only once complete
    return str(path.resolve())


def main(argv=None) -> int:
    args = parse_args(argv)
    from sepo_ray.oracles.pool import RewardError
    from sepo_ray.tasks import get_task

    out = Path(args.output or f"runs/{args.task}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "result.json"
    previous = json.loads(result_path.read_text()) if args.resume and result_path.exists() else None
    overrides = parse_overrides(args.set)
    if previous is not None:  # resume: the run's own settings win, --iterations may extend it
        overrides = {**previous["overrides"], **overrides}
        args.reward = args.reward or previous.get("reward")
        args.seed = previous.get("seed", args.seed)
    try:
        task = get_task(args.task)
        config = build_config(args.task, args.reward, args.seed, overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    init_ray(args.num_cpus)
    settings = config.sepo_settings()
    print(
        f"SEPO on task {task.name!r}: L={task.length}, B*G={config.batch_sequences} sequences/iteration "
        f"({config.prompts_per_batch} prompts x {config.group_size}), T={config.denoise_steps}, "
        f"M={config.snis_samples}, K positions={config.neighbour_positions}, eps={config.clip_eps}, "
        f"alpha={config.kl_alpha}, lr={config.lr}, epochs={config.num_epochs}, "
        f"reward={config.reward or task.default_reward}",
        flush=True,
    )
    record = previous or {
        "task": task.name,
        "reward": args.reward,
        "seed": args.seed,
        "overrides": overrides,
        "config": {**settings, "lr": config.lr, "num_epochs": config.num_epochs},
        "history": [],
        "checkpoints": [],
        "final_checkpoint": None,
    }
    algo = config.build_algo()

    def current_metrics() -> dict:
        return evaluate_model(
            algo.current_denoiser(),
            task,
            args.eval_samples,
            config.denoise_steps,
            config.corrector_steps,
            args.reward,
        )

    try:
        if previous is not None and previous.get("checkpoints"):
            last = previous["checkpoints"][-1]
            algo.restore_from_path(last)
            done = algo.iteration
            record["history"] = [h for h in record["history"] if h["iteration"] <= done]
            print(f"resumed from {last} at iteration {done}", flush=True)
        if not args.no_eval and "before" not in record:
            print(
                f"before: metrics of {args.eval_samples} samples of the pretrained generator ...", flush=True
            )
            record["before"] = current_metrics()
            write_json(result_path, record)
        while algo.iteration < args.iterations:
            t0 = time.time()
            result = algo.train()
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
                if key.startswith("heldout_"):
                    row[key] = float(value)
            record["history"].append(row)
            heldout = ", ".join(
                f"{k.removeprefix('heldout_')} {v:.3f}" for k, v in row.items() if k.startswith("heldout_")
            )
            print(
                f"iter {row['iteration']:>3}/{args.iterations} | reward mean {row['reward_mean']:.4f} "
                f"median {row['reward_median']:.4f} | kl {row['kl']:.4f} | clip {row['clip_frac']:.3f} | "
                f"{row['time_s']:.1f} s" + (f" | held-out {heldout}" if heldout else ""),
                flush=True,
            )
            if algo.iteration % config.checkpoint_frequency == 0 or algo.iteration == args.iterations:
                record["checkpoints"].append(save_checkpoint(algo, out))
                record["final_checkpoint"] = record["checkpoints"][-1]
            write_json(result_path, record)
        if not args.no_eval:
            print(
                f"after: metrics of {args.eval_samples} samples of the fine-tuned generator ...", flush=True
            )
            record["after"] = current_metrics()
            write_json(result_path, record)
            print_table(record["before"], record["after"])
    except RewardError as e:
        write_json(result_path, record)
        last = record["checkpoints"][-1] if record["checkpoints"] else "none yet"
        print(f"error: {e}\nlast checkpoint (intact): {last}", file=sys.stderr)
        return 3
    finally:
        algo.stop()
    print(f"\nresult: {result_path}\nfinal checkpoint: {record['final_checkpoint']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
