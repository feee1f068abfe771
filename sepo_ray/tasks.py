"""Tasks: what SEPO fine-tunes (sequence length, alphabet, pretrained generator) and against which reward.

A task is a small frozen record plus a generator factory. ``dna`` is the embedded default (200 bp regulatory
DNA, the generator pretrained on the ENCODE DHS table, the HepG2 fine-tuning oracle as reward and the
evaluation oracle for held-out scores); ``toy`` is a 16-token task with a small randomly initialised generator
and an easy reward, for smoke tests and demos that need no artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Task:
    """A fine-tuning task.

    name: registry name. length: L tokens per sequence. num_tokens: m clean tokens (MASK = m).
    alphabet: m characters; rewards receive sequences as strings over it. default_reward: reward spec used
    when the config names none. heldout_reward: reward spec of the held-out (evaluation) oracle, or None.
    heldout_realism: ``(name, "module:function")`` of a realism score computed on the same held-out samples
    (a function of a list of sequences returning one float, higher = more like real data; reported as
    ``sepo/heldout_<name>``), or None. It tells an oracle-fooling policy from a good one.
    build: ``build(generator: str | None) -> torch.nn.Module``, the pretrained denoiser (None = the task's own).
    """

    name: str
    length: int
    num_tokens: int
    alphabet: str
    default_reward: str
    heldout_reward: str | None
    build: Callable[[str | None], torch.nn.Module] = field(repr=False)
    heldout_realism: tuple[str, str] | None = None

    def build_denoiser(self, generator: str | None = None) -> torch.nn.Module:
        return self.build(generator)

    def decode(self, x: torch.Tensor) -> list[str]:
        """Token ids (N, L) in 0..m-1 -> N strings over the alphabet."""
        lut = np.frombuffer(self.alphabet.encode(), dtype=np.uint8)
        return [row.tobytes().decode() for row in lut[x.cpu().numpy()]]


def fraction_a(sequences: Sequence[str]) -> np.ndarray:
    """Toy reward: the fraction of 'A' in each sequence (one float per sequence)."""
    return np.array([s.count("A") / max(1, len(s)) for s in sequences], dtype=np.float64)


def _toy_generator(generator: str | None) -> torch.nn.Module:
    from sepo_ray.models.dnaconv import DNAConvDenoiser

    if generator is not None:
        from sepo_ray.models import load_denoiser

        return load_denoiser(generator)
    g = torch.Generator().manual_seed(0)
    model = DNAConvDenoiser(hidden_dim=16, num_cnn_stacks=1, num_tokens=4)
    with torch.no_grad():
        for p in model.parameters():  # seeded init, independent of the global RNG
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _dna_generator(generator: str | None) -> torch.nn.Module:
    from sepo_ray.models import load_denoiser

    return load_denoiser(generator or "pretrained")


TASKS: dict[str, Task] = {
    "dna": Task(
        name="dna",
        length=200,
        num_tokens=4,
        alphabet="ACGT",
        default_reward="dna_ft",
        heldout_reward="dna_eval",
        build=_dna_generator,
        # 3-mer frequency correlation with real HepG2 DHS (pretrained ~0.96; reward hacking drives it to ~0.1)
        heldout_realism=("kmer3_corr", "sepo_ray.metrics:kmer3_corr"),
    ),
    "toy": Task(
        name="toy",
        length=16,
        num_tokens=4,
        alphabet="ACGT",
        default_reward="sepo_ray.tasks:fraction_a",
        heldout_reward=None,
        build=_toy_generator,
    ),
}


def get_task(name: str) -> Task:
    """The registered task ``name``; an unknown name raises ValueError listing the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
