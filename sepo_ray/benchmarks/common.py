"""What every benchmark entry shares: the registry, the machine, timing, and forward counting."""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict]] = {}
QUICK_ENV = "SEPO_BENCH_QUICK"


def register(name: str):
    """Decorator adding ``fn(args) -> dict`` to the registry under ``name``."""

    def wrap(fn):
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is already registered")
        BENCHMARKS[name] = fn
        return fn

    return wrap


def machine_info() -> dict:
    """CPU model, core count, torch version and GPU (if any) of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": gpu,
    }


def is_quick(args: argparse.Namespace) -> bool:
    """``--quick`` or ``SEPO_BENCH_QUICK=1``: tiny sizes, a smoke run of every entry (figures not meaningful)."""
    return bool(getattr(args, "quick", False)) or os.environ.get(QUICK_ENV, "") not in ("", "0")


# ------------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Wall-clock seconds of fn() (the device synchronised before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def summary(values: list[float], digits: int = 5) -> dict:
    """median / min / max of repeated timings (seconds) and the runs themselves, in the order taken."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def mean_sem(values: list[float]) -> dict:
    """Mean and standard error of the mean, rounded to 4 digits."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": round(mean, 4), "sem": round(math.sqrt(var / n), 4)}


def load_avg() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- networks
def default_task():
    """The task the settings schema names by default (its L and m size the benchmarks)."""
    from sepo_ray.settings import SEPO_SETTINGS
    from sepo_ray.tasks import get_task

    return get_task(SEPO_SETTINGS["task"].default)


def conv_denoiser(hidden: int, stacks: int, num_tokens: int | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised ConvDenoiser (speed does not depend on the weights); m = the default task's."""
    from sepo_ray.models import ConvDenoiser

    torch.manual_seed(seed)
    m = default_task().num_tokens if num_tokens is None else num_tokens
    return ConvDenoiser(hidden_dim=hidden, num_cnn_stacks=stacks, num_tokens=m)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter frozen."""
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


# -------------------------------------------------------------------------------------- forward counting
@dataclass
class ForwardTally:
    """Denoiser forward passes: calls, sequences forwarded (rows) and rows forwarded with gradient."""

    calls: int = 0
    rows: int = 0
    grad_rows: int = 0

    def add(self, rows: int, grad: bool) -> None:
        self.calls += 1
        self.rows += rows
        self.grad_rows += rows if grad else 0

    def reset(self) -> None:
        self.calls = self.rows = self.grad_rows = 0

    def snapshot(self) -> dict:
        return {"calls": self.calls, "rows": self.rows, "grad_rows": self.grad_rows}


class CountingDenoiser(nn.Module):
    """Forwards to ``model`` and adds every call to ``tally`` (rows = z.shape[0]; grad if autograd records it)."""

    def __init__(self, model: nn.Module, tally: ForwardTally):
        super().__init__()
        self.model = model
        self.tally = tally
        self.num_tokens = int(model.num_tokens)
        self.mask_id = int(getattr(model, "mask_id", model.num_tokens))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.model.parameters())
        self.tally.add(int(z.shape[0]), grad)
        return self.model(z)  # (B, L, m)


class ShapeOnlyDenoiser(nn.Module):
    """Logits of the right shape, (B, L, m), at almost no cost, with one parameter so that backward runs.

    How many forwards an update makes does not depend on the network, so counts at a task's full length need
    no full-size compute: the counts are taken on this stand-in and the timings on the real networks.
    """

    def __init__(self, num_tokens: int = 4):
        super().__init__()
        self.num_tokens = self.mask_id = int(num_tokens)
        self.bias = nn.Parameter(torch.zeros(num_tokens))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(z.shape[0], z.shape[1], self.num_tokens)  # (B, L, m)
