"""A run folder: ``result.json`` (the record), ``checkpoints/iter_NNNN/`` (RLlib state + ``generator.safetensors``).

Paths inside are relative to the folder, so a run folder can be moved. A folder that holds a record or any
checkpoint is a run folder: a new run never writes into it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sepo_ray.settings import SETTINGS

RECORD = "result.json"


def read_record(run_dir: str | Path) -> dict | None:
    """The run's ``result.json``, or None when the folder holds none; ValueError names a corrupt file."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); the run's checkpoints are in {path.parent / 'checkpoints'}"
        ) from None


def checkpoints_in(run_dir: str | Path) -> list[Path]:
    """The checkpoint folders present in ``run_dir/checkpoints`` (complete ones: no ``.tmp`` suffix), sorted."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(p for p in folder.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp"))


def check_output(out: Path, resume: bool) -> dict | None:
    """Checks ``out`` for a new run (or, with ``resume``, for continuing one) before any work; returns the
    record of the run to resume. ValueError (one line) for a file in the way, an unwritable folder, a folder that
    holds a run already (a record or checkpoints) without ``resume``, or nothing to resume with it."""
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == out else f"lies under the file {parent}"
            raise ValueError(f"--output {out} {what}, not a directory")
    previous = read_record(out)
    if resume and previous is None:
        raise ValueError(f"--resume: {out} holds no run (no {RECORD}); drop --resume to start one there")
    if not resume:
        if previous is not None:
            raise ValueError(
                f"{out} holds a run already: continue it with --resume, or choose another --output"
            )
        if checkpoints_in(out):
            raise ValueError(
                f"{out} holds checkpoints of an earlier run ({checkpoints_in(out)[-1].name}, ...): a new run would "
                "overwrite them; choose another --output"
            )
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None:
        try:  # a real write: permission bits say nothing of a read-only mount
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as e:
            raise ValueError(f"--output {out}: {existing} is not writable ({e.strerror})") from None
    return previous


def recorded_settings(record: dict) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, sources) a run was trained with; records written before settings were resolved in one place
    (``config`` + ``overrides`` + ``seed``) are read too."""
    if "settings" in record:
        return dict(record["settings"]), dict(record.get("sources", {}))
    values = {k: v for k, v in record.get("config", {}).items() if k in SETTINGS}
    values.update(record.get("overrides", {}))
    values["seed"] = record.get("seed", 0)
    return values, {}


def same_settings(record: dict, wanted) -> bool:
    """Whether a recorded run was trained with the resolved ``wanted`` settings (resumable ones aside)."""
    values, _ = recorded_settings(record)
    keys = {*values, *wanted.values}

    def fixed(v: dict) -> dict:
        return {
            k: v.get(k, SETTINGS[k].default if k in SETTINGS else None) for k in keys if not _resumable(k)
        }

    return fixed(values) == fixed(dict(wanted.values))


def _resumable(name: str) -> bool:
    return name in SETTINGS and SETTINGS[name].resumable


def checkpoint_path(run_dir: str | Path, entry: str) -> Path:
    """A checkpoint named in ``result.json`` (relative to the run folder; absolute in older runs)."""
    path = Path(entry)
    return path if path.is_absolute() else Path(run_dir) / path


def generator_source(source: str | Path) -> str | Path:
    """What a ``--model`` names, as ``Task.build_denoiser`` takes it: ``"pretrained"``; a run folder (the generator
    of its final checkpoint); an exported model folder or a generator file (as they are). ValueError for a run
    folder without a checkpoint yet."""
    if str(source) == "pretrained":
        return "pretrained"
    path = Path(source)
    record = read_record(path) if path.is_dir() else None
    if record is None:
        return path
    if not record.get("final_checkpoint"):
        raise ValueError(f"{path} holds a run without a checkpoint yet")
    return checkpoint_path(path, record["final_checkpoint"]) / "generator.safetensors"


def calls_spent(record: dict, iteration: int | None = None) -> int:
    """Reward-oracle calls a run spent (by ``iteration``): iterations done x sequences per iteration."""
    values, _ = recorded_settings(record)
    done = [h for h in record["history"] if iteration is None or h["iteration"] <= iteration]
    return len(done) * int(values["prompts_per_batch"]) * int(values["group_size"])


def save_checkpoint(algo, out: Path) -> str:
    """RLlib checkpoint (to resume) plus the generator as safetensors (to evaluate or share); returns its path
    relative to the run folder. The folder appears only once complete (written as ``.tmp``, then renamed)."""
    from sepo_ray.models import save_model

    path = out / "checkpoints" / f"iter_{algo.iteration:04d}"
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    algo.save_to_path(str(tmp.resolve()))
    model = algo.config.task_spec().export_denoiser(algo.current_denoiser())
    save_model(model, tmp / "generator.safetensors", {"iteration": str(algo.iteration)})
    if path.exists():  # a checkpoint of this run after its last recorded one (a resume past a crash)
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path.relative_to(out).as_posix()


def restore_last_good(algo, out: Path, record: dict) -> Path | None:
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
