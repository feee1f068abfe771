"""Progress that reads well wherever it goes: a tqdm bar on a terminal, and in a log (``ray job submit``, a file)
a plain line every few seconds instead of a bar that writes a carriage-return update per step."""

from __future__ import annotations

import sys
import time


def eta_text(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class PlainProgress:
    """The part of tqdm's interface this package uses (``update``, ``n``, ``set_postfix_str``, ``close``, a
    context manager), printing ``desc: n/total unit (pct %), elapsed, ETA`` at most every ``interval_s``."""

    def __init__(self, total: int, desc: str, unit: str = "step", interval_s: float = 5.0, stream=None):
        self.total, self.desc, self.unit, self.interval_s = int(total), desc, unit, interval_s
        self.stream = stream or sys.stderr
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += int(k)
        now = time.monotonic()
        if now - self.last >= self.interval_s and self.n < self.total:
            self.last = now
            self._line(now)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        eta = elapsed / self.n * (self.total - self.n) if self.n else float("nan")
        pct = 100.0 * self.n / self.total if self.total else 100.0
        extra = f" [{self.postfix}]" if self.postfix else ""
        eta_part = f", ETA {eta_text(eta)}" if eta == eta else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({pct:.0f} %), {eta_text(elapsed)}{eta_part}{extra}",
              file=self.stream, flush=True)  # fmt: skip

    def close(self) -> None:
        pass

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(
    total: int, desc: str, unit: str = "step", disable: bool = False, leave: bool = False, position=None
):
    """A tqdm bar when stderr is a terminal, else :class:`PlainProgress` (``disable``: neither prints)."""
    if disable or not sys.stderr.isatty():
        bar = PlainProgress(total, desc, unit)
        if disable:
            bar.interval_s = float("inf")
        return bar
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, position=position)
