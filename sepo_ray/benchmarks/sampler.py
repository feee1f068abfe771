"""``sampler_overhead``: T-step sampling time / (T x one denoiser forward at the same batch)."""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from .common import (
    CountingDenoiser,
    ForwardTally,
    conv_denoiser,
    default_task,
    is_quick,
    load_avg,
    register,
    seconds,
    summary,
)


def sampler_overhead_row(
    model: nn.Module, batch: int, length: int, steps: int, repeats: int, forwards: int, seed: int = 0
) -> dict:
    """T-step sampling time / (T x one denoiser forward at the same batch), paired per repeat, median.

    Each repeat times one `diffusion.sample` call and then `forwards` forwards of the denoiser on a fully
    masked (batch, L) input (the CNN's cost does not depend on the tokens); the row's ratio is the median of
    the per-repeat ratios. The forward calls the sampler makes are counted once, with a `CountingDenoiser`.
    """
    from sepo_ray.diffusion import sample

    model = model.eval()
    z = torch.full((batch, length), model.num_tokens, dtype=torch.long)  # (B, L) all MASK
    gen = torch.Generator().manual_seed(seed)
    tally = ForwardTally()
    with torch.no_grad():
        sample(CountingDenoiser(model, tally), batch, length, steps, generator=gen)
        model(z)  # warm-up
        sample_s, forward_s, ratios = [], [], []
        for _ in range(repeats):
            t_sample = seconds(lambda: sample(model, batch, length, steps, generator=gen))
            t_fwd = statistics.median(seconds(lambda: model(z)) for _ in range(forwards))
            sample_s.append(t_sample)
            forward_s.append(t_fwd)
            ratios.append(t_sample / (steps * t_fwd))
    t_sample, t_fwd = statistics.median(sample_s), statistics.median(forward_s)
    return {
        "ratio": round(statistics.median(ratios), 4),
        "per_step_overhead_ms": round(1e3 * (t_sample - steps * t_fwd) / steps, 4),
        "sample_s": summary(sample_s),
        "forward_s": summary(forward_s),
        "sampler_forward_calls": tally.calls,
        "sampler_forward_rows": tally.rows,
        "settings": {
            "batch": batch,
            "length": length,
            "steps": steps,
            "repeats": repeats,
            "forwards_per_repeat": forwards,
            "model": getattr(model, "config", type(model).__name__),
        },
    }


@register("sampler_overhead")
def sampler_overhead(args: argparse.Namespace) -> dict:
    """Sampler bookkeeping overhead over the bare denoiser forwards, for CNNs of three sizes.

    Rows: "shipped_generator_size" (ConvDenoiser hidden 64, 2 stacks, the default task's L), "drakes_size" (the
    DRAKES-size generator, hidden 128, 4 stacks), "toy" (hidden 16, 1 stack, L = 16); m is the default task's.
    """
    quick = is_quick(args)
    length = default_task().length
    rows = {}
    load = load_avg()
    if quick:
        rows["shipped_generator_size"] = sampler_overhead_row(
            conv_denoiser(16, 1), 4, 32, 4, repeats=2, forwards=2
        )
        rows["toy"] = sampler_overhead_row(conv_denoiser(16, 1), 8, 16, 4, repeats=2, forwards=2)
    else:
        rows["shipped_generator_size"] = sampler_overhead_row(
            conv_denoiser(64, 2), 16, length, 16, repeats=3, forwards=5
        )
        rows["drakes_size"] = sampler_overhead_row(conv_denoiser(128, 4), 4, length, 8, repeats=3, forwards=5)
        rows["toy"] = sampler_overhead_row(conv_denoiser(16, 1), 64, 16, 32, repeats=5, forwards=20)
    return {
        "ratio": {name: row["ratio"] for name, row in rows.items()},
        "rows": rows,
        "load_avg_1m_at_start": load,
        "quick": quick,
        "note": (
            "ratio = T-step sampling time / (T x one denoiser forward at the same batch); 1.0 = the sampler adds "
            "nothing to its T forwards (sampler_forward_calls = T, each of `batch` rows). per_step_overhead_ms is "
            "the absolute cost per step of the bookkeeping: log-softmax over (B, L, m), a float64 uniform (B, L) "
            "and a Gumbel draw (B, L, m), the unmask/where and the float64 log-prob of the step. It is a fixed cost "
            "per element of (B, L, m), so the ratio approaches 1 as the network grows (the shipped and DRAKES "
            "sizes) and rises for tiny networks (toy). Moved by: network size vs. m (bigger network -> 1); "
            "correctors (c corrector steps add c remask + c forwards per step); on a GPU, kernel-launch latency at "
            "small batch (the bookkeeping is ~10 small kernels per step), which CUDA graphs or a fused step would "
            "remove."
        ),
    }
