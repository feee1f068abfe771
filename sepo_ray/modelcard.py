"""``export``: a run's generator as a self-describing model folder, what a run hands to a colleague or a lab.

    DIR/generator.safetensors   the weights (class and config in the header; loads without unpickling anything)
    DIR/config.json             task, model class and config, the run's settings and their sources, its figures
    DIR/README.md               the model card: what it is, how to load it, how it was trained, what was measured

``--set generator=DIR``, ``evaluate --model DIR`` and ``design --model DIR`` load the folder. A run whose weights
are not all finite is refused, an existing ``DIR`` is never written over, and the folder appears only once
complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from sepo_ray.rundir import calls_spent, checkpoint_path, read_record, recorded_settings
from sepo_ray.runtime import write_json


def _card(task, record: dict, values: dict, sources: dict, entry: str, sha: str) -> str:
    """The model card (Markdown) of a run's checkpoint ``entry``."""
    it = int(Path(entry).name.removeprefix("iter_"))
    calls = calls_spent(record, it)
    row = next((h for h in record["history"] if h["iteration"] == it), record["history"][-1])
    lines = [
        f"# sepo_ray generator: {task.name}, objective {values.get('objective')}, {calls} reward calls",
        "",
        f"{task.description}. A pretrained discrete-diffusion generator fine-tuned with Score Entropy Policy "
        f"Optimization (sepo_ray): objective `{values.get('objective')}`, reward `{values.get('reward')}`, "
        f"KL weight α = {values.get('kl_alpha')} to the pretrained model, {it} iterations of "
        f"{values.get('prompts_per_batch')} × {values.get('group_size')} sequences ({calls} reward-oracle calls), "
        f"seed {values.get('seed')}. Weights SHA-256 `{sha}`.",
        "",
        "## Use",
        "",
        "```bash",
        f"sepo-ray design {values.get('task', task.name)} --model DIR --n 100 --output designs/",
        f"sepo-ray evaluate {values.get('task', task.name)} --model pretrained,DIR --output eval/",
        f"sepo-ray run {values.get('task', task.name)} --set generator=DIR   # fine-tune it further",
        "```",
        "",
        "## Training",
        "",
        "| setting | value | source |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{k}` | `{v!r}` | {sources.get(k, '')} |"
        for k, v in values.items()
        if sources.get(k) != "default"
    ]
    lines += [
        "",
        "Every other setting at its default (all of them in `config.json`). At the exported iteration: reward mean "
        f"{row['reward_mean']:.4f}, median {row['reward_median']:.4f}, path KL to the pretrained model "
        f"{row['kl']:.4f} nats per sequence.",
    ]
    if "before" in record and "after" in record:
        ev = record.get("evaluation", {})
        lines += [
            "",
            "## Measured",
            "",
            f"The run's own before/after evaluation: {ev.get('samples', '?')} fresh samples from the pretrained and "
            f"from the final fine-tuned generator (sampling seed {ev.get('sampling_seed', '?')}, "
            f"T = {ev.get('steps', '?')} steps), scored by the task's evaluation table (oracles never used in "
            "training where the task has them). One training seed and one evaluation seed: a first reading, not a "
            "comparison (use `sepo-ray compare` for intervals over seeds).",
            "",
            "| metric | pretrained | fine-tuned |",
            "|---|---|---|",
        ]
        lines += [f"| {k} | {record['before'][k]:.4f} | {record['after'][k]:.4f} |"
                  for k in record["before"] if k in record["after"]]  # fmt: skip
    lines += [
        "",
        "## Limits",
        "",
        "Scores come from in-silico oracles: a reward model can be fooled, and a sequence it scores highly is a "
        "candidate, not a result. Check realism (likelihood under the pretrained model, the task's realism "
        "metric) before ordering designs.",
        "",
    ]
    return "\n".join(lines)


def export_run(run_dir: str | Path, output: str | Path, checkpoint: str | None = None) -> Path:
    """Write the model folder ``output`` for the run in ``run_dir`` (its final checkpoint, or ``checkpoint``,
    e.g. ``iter_0008``); ValueError (one line) for a folder without a run or checkpoint, non-finite weights, or
    an existing ``output``."""
    from sepo_ray.evaluation import load_generator
    from sepo_ray.models import read_metadata
    from sepo_ray.tasks import get_task

    run_dir, output = Path(run_dir), Path(output)
    record = read_record(run_dir)
    if record is None:
        raise ValueError(f"{run_dir} holds no run (no result.json)")
    if output.exists():
        raise ValueError(f"--output {output} exists; an export never writes over a folder: choose another")
    values, sources = recorded_settings(record)
    entry = f"checkpoints/{checkpoint}" if checkpoint else record.get("final_checkpoint")
    if not entry or not any(Path(c).as_posix().endswith(entry) for c in record.get("checkpoints", [])):
        raise ValueError(
            f"{run_dir} has no checkpoint {checkpoint or ''} (it has {record.get('checkpoints')})"
        )
    task = get_task(values.get("task", record.get("task")))
    weights = checkpoint_path(run_dir, entry) / "generator.safetensors"
    load_generator(task, weights)  # refuses non-finite weights, naming the parameter
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(weights, tmp / "generator.safetensors")
    sha = hashlib.sha256((tmp / "generator.safetensors").read_bytes()).hexdigest()
    meta = read_metadata(weights)
    it = int(Path(entry).name.removeprefix("iter_"))
    write_json(tmp / "config.json", {
        "format": "sepo_ray generator", "weights": "generator.safetensors", "sha256": sha,
        "task": values.get("task", task.name), "model_class": meta.get("class"), "iteration": it,
        "oracle_calls": calls_spent(record, it), "settings": values, "sources": sources,
        "before": record.get("before"), "after": record.get("after"), "evaluation": record.get("evaluation"),
        "history": [h for h in record["history"] if h["iteration"] <= it],
    })  # fmt: skip
    (tmp / "README.md").write_text(_card(task, record, values, sources, entry, sha))
    os.replace(tmp, output)
    return output
