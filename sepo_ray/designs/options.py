"""What a design order asks for: one frozen dataclass, its rules, and the parsers of its textual options."""

from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: columns the engine writes for every task; a task adds its own (``Task.design_column_help``)
ENGINE_COLUMNS = {
    "id": "the design's name, in the order it was drawn (stable when only --rank-by changes)",
    "rank": "1 = best under --rank-by",
    "sequence": "the designed sequence (a task with prompts: prompt + completion)",
    "reward": "the training reward (--reward, a run folder's reward, or the task's run default)",
    "candidates": "candidates the design was selected from (--select best-of-N: N; plain sampling: 1)",
}
PROMPT_COLUMNS = {
    "prompt_index": "which prompt the design completes (0-based, in the order given)",
    "prompt": "the prompt text",
    "completion": "the completion text",
}


@dataclass(frozen=True)
class DesignOptions:
    """The numbers of one ``sepo-ray design`` order (the command line's flags, checked by :meth:`validate`)."""

    n: int = 100
    """designs to deliver (a task with prompts: per prompt)"""
    seed: int = 0
    """seeds the sampler: the same order gives the same designs"""
    steps: int = 32
    """T, sampler steps per sequence"""
    select: int = 1
    """N of best-of-N: candidates per design, the reward keeps the best (1: plain sampling)"""
    rank_by: str = "reward"
    """the column the designs are sorted by"""
    descending: bool = True
    """sort order of ``rank_by`` (True: largest first)"""
    batch_size: int = 256
    """most sequences per sampler batch"""
    max_draws_per_candidate: int = 50
    """the draw bound: at most this many draws per candidate needed (n x N per prompt)"""
    time_limit_s: float = 3600.0
    """the wall-clock bound of the sampling loop, seconds"""
    compare_samples: int = 100
    """sequences of each comparison row of summary.md (the pretrained generator's, the task's real data); 0: none"""

    def validate(self) -> DesignOptions:
        """ValueError (one line, naming the flag) for a number out of range; returns self."""
        for flag, value, least in (
            ("--n", self.n, 1),
            ("--steps", self.steps, 1),
            ("--select", self.select, 1),
            ("--batch-size", self.batch_size, 1),
            ("--max-draws-per-candidate", self.max_draws_per_candidate, 1),
            ("--compare-samples", self.compare_samples, 0),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{flag} must be an integer >= {least}, got {value!r}")
        if not (isinstance(self.time_limit_s, (int, float)) and math.isfinite(self.time_limit_s)) or not (
            self.time_limit_s > 0
        ):
            raise ValueError(f"--time-limit must be a number of seconds > 0, got {self.time_limit_s!r}")
        return self

    def candidates_per_prompt(self) -> int:
        """Distinct candidates meeting every constraint that one prompt (or the whole order) needs: n x N."""
        return self.n * self.select

    def max_draws(self, groups: int = 1) -> int:
        """The bound on draws of the whole order: ``max_draws_per_candidate`` x n x N x prompts."""
        return self.max_draws_per_candidate * self.candidates_per_prompt() * groups


def parse_select(text: str | None) -> int:
    """``--select``: ``None``/"none"/"plain" -> 1; ``"best-of-N"`` -> N (N >= 1). ValueError otherwise."""
    if text is None or text.strip().lower() in ("", "none", "plain"):
        return 1
    match = re.fullmatch(r"best-of-(\d+)", text.strip().lower())
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"--select must be 'best-of-N' with N >= 1 (e.g. best-of-4), got {text!r}")
    return int(match.group(1))


def parse_rank_by(text: str, columns: dict[str, str] | list[str]) -> tuple[str, bool]:
    """``--rank-by COLUMN[:asc|:desc]`` -> (column, descending); default order descending. ValueError names the
    columns there are."""
    column, _, order = text.partition(":")
    if order not in ("", "asc", "desc"):
        raise ValueError(f"--rank-by {text!r}: the order after ':' must be 'asc' or 'desc'")
    if column not in columns:
        raise ValueError(f"--rank-by {column!r} is not a column; choose one of: {', '.join(columns)}")
    return column, order != "asc"


def check_new_output(out: Path) -> None:
    """``--output`` must be a folder that does not exist yet (designs never overwrite anything) and whose
    parent can be written; ValueError, one line, before any work."""
    if out.exists() or out.is_symlink():
        what = "folder" if out.is_dir() else "file"
        raise ValueError(
            f"--output {out} exists already (a {what}); designs never overwrite: choose a new folder"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--output {out} lies under the file {parent}")
            try:  # a real write: permission bits say nothing of a read-only mount
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as e:
                raise ValueError(f"--output {out}: {parent} is not writable ({e.strerror})") from None
            return


def staging_folder(out: Path) -> Path:
    """The hidden sibling folder the outputs are written into before it is renamed to ``out`` in one step, so
    that a failed or interrupted order leaves no half-written ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
