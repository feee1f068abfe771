"""``gpu_throughput``: sequences/s of the DRAKES-size generator (hidden 128, 4 stacks, T = 128) on a GPU."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from .common import conv_denoiser, default_task, is_quick, register, seconds, summary

GPU_MODES = ("fp32", "tf32", "bf16")


def gpu_throughput_run(
    device: str = "cuda",
    hidden: int = 128,
    stacks: int = 4,
    length: int | None = None,
    steps: int = 128,
    batches: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048),
    modes: tuple[str, ...] = GPU_MODES,
    repeats: int = 2,
    budget_s: float = 150.0,
) -> dict:
    """Sequences/s of the T-step sampler for a ConvDenoiser, per precision mode and batch size.

    length: L (None = the default task's); m is the default task's.

    fp32: TF32 off for cuDNN and matmul (true fp32); tf32: PyTorch's default for convolutions (cuDNN TF32 on);
    bf16: ``torch.autocast(dtype=bfloat16)`` (LayerNorm and the sampler's log-softmax stay fp32). Each batch:
    one 2-step warm-up (cuDNN autotuning), then `repeats` full samples, median. The sweep of a mode stops at
    an out-of-memory error, when a larger batch is >10% slower than the best so far, or after `budget_s`.
    """
    from sepo_ray.diffusion import sample

    dev = torch.device(device)
    flags = (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    model = conv_denoiser(hidden, stacks).to(dev).eval()
    length = default_task().length if length is None else length
    out = {}
    try:
        torch.backends.cudnn.benchmark = True
        for mode in modes:
            if mode not in GPU_MODES:
                raise ValueError(f"mode must be one of {GPU_MODES}, got {mode!r}")
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"

            def ctx(mode=mode):
                if mode == "bf16":
                    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
                return contextlib.nullcontext()

            rows, best, start = {}, None, time.perf_counter()
            for b in batches:
                try:
                    with ctx(), torch.no_grad():
                        sample(model, b, length, min(2, steps), device=dev)
                        if dev.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(dev)
                        times = [
                            seconds(lambda b=b: sample(model, b, length, steps, device=dev), dev)
                            for _ in range(repeats)
                        ]
                except torch.cuda.OutOfMemoryError:
                    rows[str(b)] = {"error": "out of memory"}
                    torch.cuda.empty_cache()
                    break
                t = statistics.median(times)
                row = {"sequences_per_s": round(b / t, 2), "seconds": summary(times, 4)}
                if dev.type == "cuda":
                    row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
                rows[str(b)] = row
                if best is None or row["sequences_per_s"] > rows[str(best)]["sequences_per_s"]:
                    best = b
                elif row["sequences_per_s"] < 0.9 * rows[str(best)]["sequences_per_s"]:
                    break
                if time.perf_counter() - start > budget_s:
                    break
            out[mode] = {
                "best_batch": best,
                "best_sequences_per_s": rows[str(best)]["sequences_per_s"] if best is not None else None,
                "by_batch": rows,
            }
    finally:
        (
            torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = flags
    return {
        "modes": out,
        "settings": {
            "hidden": hidden,
            "stacks": stacks,
            "length": length,
            "steps": steps,
            "repeats": repeats,
        },
    }


@register("gpu_throughput")
def gpu_throughput(args: argparse.Namespace) -> dict:
    """Sequences/s of the DRAKES-size generator (hidden 128, 4 stacks, T = 128, the default task's L), bf16 vs fp32."""
    if not torch.cuda.is_available():
        return {"skipped": "no GPU"}
    quick = is_quick(args)
    if quick:
        res = gpu_throughput_run("cuda", hidden=32, stacks=1, length=64, steps=4, batches=(8, 16), repeats=1)
    else:
        res = gpu_throughput_run("cuda")
    best = {mode: row["best_sequences_per_s"] for mode, row in res["modes"].items()}
    return {
        "best_sequences_per_s": best,
        "bf16_over_fp32": round(best["bf16"] / best["fp32"], 3)
        if best.get("bf16") and best.get("fp32")
        else None,
        **res,
        "quick": quick,
        "note": (
            "Sequences/s of the whole T-step sampler (T forwards + bookkeeping, one sequence = T = 128 forwards of "
            "a 20-layer dilated CNN over the default task's length L), at the best batch of the sweep. fp32 = TF32 off (true fp32), tf32 = "
            "PyTorch's default for convolutions, bf16 = autocast. Moved by: batch (small batches are launch-bound: "
            "per step ~10 bookkeeping kernels plus ~70 for the network; CUDA graphs or torch.compile would remove "
            "that), precision (bf16 tensor cores), channels-last / fused LayerNorm+conv, and the float64 draws of "
            "the sampler (cheap next to the convolutions)."
        ),
    }
