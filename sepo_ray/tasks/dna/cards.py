"""What every DNA artifact card records besides its figures: training clock, environment, the file's hash."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from .data.dhs import sha256_file


class Clock:
    """Wall and process-CPU seconds since construction."""

    def __init__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    def cpu(self) -> float:
        return time.process_time() - self.cpu0


def environment(threads: int) -> dict:
    """Versions and thread count a card records (a run is deterministic for a seed and thread count)."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": threads,
    }


def write_card(out_dir: Path, name: str, card: dict) -> None:
    """Add ``file_sha256`` of ``out_dir/NAME.safetensors`` to ``card`` and write it as ``out_dir/NAME.json``."""
    card["file_sha256"] = sha256_file(out_dir / f"{name}.safetensors")
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
