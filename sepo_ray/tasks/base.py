"""The Task interface: everything domain-specific that the engine asks of a task.

The engine (diffusion, sepo, rllib, envs, run, evaluate, compare, sweep, bench) names no task and no task
metric: it asks the task for its vocabulary and decoding, its denoiser, its default reward, how to sample, and
its held-out evaluation. A task subclasses :class:`Task`, sets the class attributes and overrides what differs
from the defaults:

- vocabulary: ``length`` L, ``num_tokens`` m (MASK = m), ``alphabet`` (m characters; the default ``decode``
  and ``encode`` use it; a task with a tokenizer overrides both);
- ``build_denoiser(generator)``: the pretrained denoiser ``model(z (B, L)) -> logits (B, L, m)`` (or the
  weights in ``generator``: a file or folder);
- ``default_reward``: a reward spec (``"module:function"``, or a reward name its package declares in the
  entry-point group ``sepo_ray.oracles``);
- ``validation(sequences, prompts)``: the validation signal, the only thing any selection may look at (tuning,
  early stopping, choosing a base run or a setting): ``{"validation_score": ..., "validation_realism": ...}``
  computed from validation data or a validation oracle, never from an evaluation signal (the scorer's oracle,
  classifiers or judge); ``{}`` for a task without one (selection then reads the training reward);
  ``validation_signal`` names it in result files; ``validation_prompts(seed, n)`` the prompts it is drawn on;
- ``scorer()``: the evaluation signals, read only by the final report: the evaluation table (per-sequence scores, set-level metrics with their labels, the plotted
  score); the default scores the default reward;
- ``reference_rows()``: rows of real data for the evaluation table;
- a task with prompts: ``prompts(split)``, ``encode_prompts(texts)`` (a user's own prompts, checked) and
  ``split_prompt(sequences, prompts)`` (decoded sequences -> prompt and completion texts);
- ``pretrain(argv)``: the task's pretraining command (``python -m sepo_ray.pretrain NAME``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import argparse

    import pandas as pd


def prompt_draw(seed: int, num_samples: int, pool_size: int) -> Tensor:
    """Indices (num_samples,) into a pool of ``pool_size`` prompts, uniform with replacement, seeded."""
    if pool_size < 1:
        raise ValueError("the prompt pool is empty")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, pool_size, (num_samples,), generator=gen)  # (N,)


def read_prompt_file(path: str | Path) -> list[str]:
    """A user's prompts, one per line (UTF-8; trailing white space and the line break are not part of the
    prompt: a GPT-2 prompt ending in a space would be followed by unnatural tokens). ValueError for a file
    that does not exist or cannot be read, or one that holds no line; a blank line is an empty prompt (the task's
    ``encode_prompts`` refuses it, naming its number)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"prompt file {path} does not exist" if not path.exists() else f"{path} is not a file"
        )
    try:
        lines = [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"prompt file {path} cannot be read: {e}") from None
    if not lines:
        raise ValueError(f"prompt file {path} is empty: write one prompt per line")
    return lines


class Scorer:
    """The evaluation table of a task: per-sequence scores and set-level metrics.

    ``metric_labels``: set-level metric key -> table label, in table order (``metric_digits``: decimals shown
    per metric, default 3). ``plot_score``: the per-sequence
    score a violin plot shows (None: no plot), ``plot_label`` its axis label. The default scores a reward spec.
    """

    metric_labels: Mapping[str, str] = {
        "reward_mean": "reward (mean) ↑",
        "reward_median": "reward (median) ↑",
    }
    metric_digits: Mapping[str, int] = {}  # decimals per metric in tables (default 3)
    plot_score: str | None = "reward"
    plot_label: str = "reward"
    #: a per-sequence score compared pairwise against the ``pretrained`` row (same seed, same index: the same
    #: prompt), giving the metric ``win_rate`` (ties count half); None: no pairwise comparison
    paired_score: str | None = None
    #: the metric comparisons rank rows by (None: the first of ``metric_labels``)
    score_metric: str | None = None
    #: a realism metric and the least value a row may keep to be called best (None: no guard)
    realism_metric: str | None = None
    realism_min: float = 0.0

    def __init__(self, reward: str):
        from sepo_ray.oracles.pool import resolve_reward

        self.spec = reward
        self.reward = resolve_reward(reward)

    def scores(
        self, sequences: Sequence[str], seed: int = 0, prompts: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Per-sequence scores, each float64 (N,). ``prompts``: the prompt text each sequence starts with (a task
        with prompts; the evaluation passes them), None without prompts."""
        return {"reward": self.reward(list(sequences))}

    def summarize(self, scores: Mapping[str, np.ndarray], sequences: Sequence[str]) -> dict[str, float]:
        """Set-level metrics (keys ``metric_labels``) from per-sequence scores."""
        r = np.asarray(scores["reward"], dtype=np.float64)
        return {"reward_mean": float(r.mean()), "reward_median": float(np.median(r))}

    def metrics(self, sequences: Sequence[str], seed: int = 0) -> dict[str, float]:
        return self.summarize(self.scores(sequences, seed), sequences)


class Task:
    """Base class of a fine-tuning task (see the module docstring for what to override)."""

    name: ClassVar[str] = ""
    #: how ``get_task`` found this instance (its registered name, or ``"module:TaskClass"``): what a config names
    spec: str = ""
    description: ClassVar[str] = ""
    length: int = 0
    num_tokens: int = 0
    alphabet: str = ""
    default_reward: str = ""
    #: P, the most prompt tokens at the start of a sequence (0 = unconditional generation). A task with prompts
    #: returns them from ``prompts(split)``; each GRPO group is G completions of one prompt.
    prompt_length: int = 0
    #: Settings this task runs with unless the user sets them (``python -m sepo_ray.run`` applies them first), for
    #: example the token proposals J a large vocabulary needs; names and ranges are the settings schema's.
    default_settings: ClassVar[Mapping[str, object]] = {}
    #: ``default_settings`` may name a ``reward`` (a guarded variant of ``default_reward`` for the default run);
    #: the method comparisons train and select on ``default_reward`` itself (:meth:`benchmark_reward_pin`).
    #: iterations of ``python -m sepo_ray.run TASK`` without ``--iterations`` (its default oracle budget is this
    #: times prompts_per_batch * group_size)
    default_iterations: ClassVar[int] = 16
    #: the folder of the task's shipped artifacts (hashed by ``evaluation_fingerprint``; the pretrained generator
    #: is ``artifact_dir/generator.safetensors`` unless ``build_denoiser`` says otherwise), or None
    artifact_dir: ClassVar[Path | None] = None
    #: the least ``validation_realism`` a tuning trial may keep to be chosen (``compare``/``frontier``
    #: ``--tune-realism``); 0: no guard
    validation_realism_min: ClassVar[float] = 0.0
    #: what ``validation`` computes, in words (result files name it as the selection signal)
    validation_signal: ClassVar[str] = ""
    #: training seeds a reported comparison needs (the protocol: 5, a costlier task 3); fewer is exploratory
    min_report_seeds: ClassVar[int] = 5

    def benchmark_reward_pin(self) -> dict:
        """``{"reward": default_reward}`` when the run defaults name another reward, else {}: the one override
        that puts a run of these defaults on the benchmark's reward (the ``benchmark`` layer of
        :func:`sepo_ray.resolve.resolve_settings`, which ``compare`` and ``frontier`` runs use)."""
        return {"reward": self.default_reward} if "reward" in self.default_settings else {}

    # ------------------------------------------------------------------------------------- vocabulary
    def decode(self, x: Tensor | np.ndarray) -> list[str]:
        """Token ids (N, L) in 0..m-1 -> N strings over the alphabet."""
        lut = np.frombuffer(self.alphabet.encode(), dtype=np.uint8)
        return [row.tobytes().decode() for row in lut[np.asarray(x.cpu() if torch.is_tensor(x) else x)]]

    def encode(self, sequences: Sequence[str]) -> Tensor:
        """N strings over the alphabet -> LongTensor (N, L); ValueError names the first bad sequence."""
        index = {c: i for i, c in enumerate(self.alphabet)}
        rows = []
        for i, s in enumerate(sequences):
            if len(s) != self.length:
                raise ValueError(f"sequences[{i}]: length {len(s)}, expected {self.length}")
            bad = next((c for c in s if c not in index), None)
            if bad is not None:
                raise ValueError(f"sequences[{i}]: invalid character {bad!r} (alphabet {self.alphabet!r})")
            rows.append([index[c] for c in s])
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.length)

    def prompts(self, split: str = "train") -> Tensor:
        """The prompts of ``split`` ("train": what fine-tuning conditions on; "validation": what selection reads;
        "test": what the final evaluation reads) as a
        LongTensor (num_prompts, P) of token ids, MASK (= num_tokens) after a shorter prompt's end."""
        raise NotImplementedError(f"task {self.name!r} has no prompts (prompt_length = 0)")

    def encode_prompts(self, texts: Sequence[str]) -> Tensor:
        """A user's own prompts -> LongTensor (N, P), MASK-padded; ValueError (naming the prompt) for an empty
        prompt or one longer than P tokens, or for a task without prompts."""
        raise ValueError(f"task {self.name!r} takes no prompts (prompt_length = 0)")

    def evaluation_prompts(self, seed: int, num_samples: int, pool: Tensor | None = None) -> Tensor | None:
        """The prompts (num_samples, P) that evaluation rows condition on at ``seed``: rows of ``pool`` (default
        the test prompts) drawn uniformly with ``seed``, so every generator row at a seed completes the same
        prompts; None for a task without prompts."""
        if not self.prompt_length:
            return None
        pool = self.prompts("test") if pool is None else pool  # (num_prompts, P)
        return pool[prompt_draw(seed, num_samples, len(pool))]  # (N, P)

    def split_prompt(
        self, sequences: Sequence[str], prompts: Tensor | None = None
    ) -> tuple[list[str], list[str]]:
        """Decoded sequences -> (prompt texts, completion texts), ``prompt + completion == sequence``;
        ``prompts`` (N, P): the prompt each sequence was sampled after, when known. Default: no prompt."""
        return [""] * len(sequences), list(sequences)

    # --------------------------------------------------------------------------------------- denoiser
    def build_denoiser(
        self, generator: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> nn.Module:
        """The pretrained denoiser (``generator`` None: ``artifact_dir/generator.safetensors``) or the weights in
        ``generator`` (a file or folder written by ``sepo_ray.models.save_model``), in eval mode."""
        from sepo_ray.models import load_model

        path = self.generator_file(generator)
        if path is None:
            raise NotImplementedError(f"task {self.name!r} has no pretrained denoiser: pass generator=PATH")
        return load_model(path, device)

    def export_denoiser(self, model: nn.Module) -> nn.Module:
        """The module to save as ``generator.safetensors`` for ``model`` (a registered model class; default
        ``model`` itself; a task that wraps its network for the sampler returns the network)."""
        return model

    def generator_file(self, generator: str | Path | None = None) -> Path | None:
        """The file holding the weights ``build_denoiser(generator)`` loads: ``generator``'s model file, or for
        None the task's ``artifact_dir/generator.safetensors`` (None without an ``artifact_dir``: built in code).
        FileNotFoundError / ValueError say what is missing."""
        from sepo_ray.models import model_file

        if generator is not None:
            return model_file(generator)
        if self.artifact_dir is None:
            return None
        path = Path(self.artifact_dir) / "generator.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; build it with: sepo-ray pretrain {self.name}")
        return path

    def check_files(self, generator: str | Path | None = None) -> None:
        """Before any work starts: the files a run needs exist (the generator's weights). ValueError, one line."""
        try:
            path = self.generator_file(generator)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"task {self.name!r}: {str(e).splitlines()[0]}") from None
        if path is None and generator is None and type(self).build_denoiser is Task.build_denoiser:
            raise ValueError(
                f"task {self.name!r} has no pretrained generator: set artifact_dir (holding generator.safetensors), "
                "override build_denoiser, or give --set generator=PATH"
            )

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        num_samples: int,
        steps: int,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        corrector_steps: int = 0,
        batch_size: int | None = None,
        progress: bool | Callable[[int, int], None] = False,
        prompt: Tensor | None = None,
    ) -> list[str]:
        """``num_samples`` sequences from the T-step sampler (seeded by ``seed`` or drawn from ``generator``),
        each after its row of ``prompt`` (N, P) when given; a task with prompts otherwise conditions on held-out
        prompts drawn with ``seed``."""
        from sepo_ray import diffusion

        if generator is None:
            device = next(model.parameters()).device
            generator = torch.Generator(device=device).manual_seed(int(seed or 0))
        if prompt is None and self.prompt_length:  # held-out prompts drawn with the seed, as the evaluation's
            prompt = self.evaluation_prompts(int(seed or 0), num_samples)  # (N, P)
        out = diffusion.sample(
            model,
            num_samples,
            self.length,
            steps,
            corrector_steps=corrector_steps,
            generator=generator,
            batch_size=batch_size,
            progress=progress,
            prompt=prompt,
        )
        return self.decode(out.x)

    # ------------------------------------------------------------------------------------- evaluation
    def validation(self, sequences: Sequence[str], prompts: Tensor | None = None) -> dict[str, float]:
        """The validation signal of a set of samples (``prompts`` (N, P): what each completes, for a task with
        prompts): ``validation_score`` (and ``validation_realism``), from validation data or a validation oracle,
        never an evaluation signal; {} if the task has none."""
        return {}

    def validate_model(
        self,
        model: nn.Module,
        num_samples: int,
        steps: int,
        corrector_steps: int = 0,
        seed: int | None = None,
    ) -> dict[str, float]:
        """:meth:`validation` of ``num_samples`` fresh samples of ``model`` drawn with ``seed`` (default the
        protocol's ``VALIDATION_SEED``: never a report's sampling seed, the same draw every time) after the
        validation prompts. What a selection among models or settings reads."""
        from sepo_ray.protocol import VALIDATION_SEED

        seed = VALIDATION_SEED if seed is None else int(seed)
        prompts = self.validation_prompts(seed, num_samples)  # (N, P) or None
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        seqs = self.sample(
            model, num_samples, steps, generator=gen, corrector_steps=corrector_steps, prompt=prompts
        )
        return self.validation(seqs, prompts)

    def validation_prompts(self, seed: int, num_samples: int) -> Tensor | None:
        """The prompts (num_samples, P) validation samples complete at ``seed`` (default: the ``"validation"``
        prompt split, drawn with the seed); None for a task without prompts."""
        if not self.prompt_length:
            return None
        return self.evaluation_prompts(seed, num_samples, self.prompts("validation"))

    def scorer(self, device: str | torch.device = "cpu", elbo_steps: int | None = None) -> Scorer:
        """The evaluation table's scorer (default: the default reward's mean and median)."""
        return Scorer(self.default_reward)

    def reference_rows(self) -> dict[str, Callable[[int, int], list[str]]]:
        """Rows of real data for the evaluation table: name -> ``(seed, num_samples) -> sequences``."""
        return {}

    def evaluation_fingerprint(self) -> str:
        """A hash of everything the scorer's numbers depend on besides the sequences: every file under the
        task's ``artifact_dir`` (names and contents); "" for a task without one."""
        import hashlib

        if self.artifact_dir is None:
            return ""
        h = hashlib.sha256()
        for path in sorted(Path(self.artifact_dir).rglob("*")):
            if path.is_file():
                h.update(path.name.encode() + hashlib.sha256(path.read_bytes()).hexdigest()[:16].encode())
        return h.hexdigest()[:16]

    # ----------------------------------------------------------------------------------------- design
    # ``sepo-ray design TASK`` (:mod:`sepo_ray.designs`): the engine samples, applies the constraints, removes
    # duplicates, scores the reward and ranks; the task brings its options, constraints, evidence columns, files
    # and plots. The defaults add none of them.
    def add_design_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds this task's options of ``sepo-ray design TASK`` (its constraints) to ``parser`` (an argparse parser
        or argument group); default none."""

    def design_constraints(
        self, args: argparse.Namespace
    ) -> list[tuple[str, Callable[[list[str]], np.ndarray]]]:
        """The constraints the parsed options ask for, applied by rejection in this order: ``(name, predicate)``
        with ``predicate(sequences) -> bool (N,)``, True = keep. ValueError (one line, naming the option) for a bad
        value. Default: none."""
        return []

    def design_column_help(self) -> dict[str, str]:
        """``{column: what it means}`` of :meth:`design_columns` (what ``--rank-by`` may name besides the
        engine's columns, and the legend of ``summary.md``); default none."""
        return {}

    def design_columns(
        self,
        sequences: Sequence[str],
        seed: int = 0,
        prompts: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
    ) -> dict[str, np.ndarray]:
        """The evidence for each design besides the training reward: ``{column: array (N,)}`` of numbers or
        strings, keys those of :meth:`design_column_help`; ``prompts``: each sequence's prompt text (a task with
        prompts). Calls no training reward (the engine counts those). Default: none."""
        return {}

    def write_designs(self, table: pd.DataFrame, folder: Path) -> list[str]:
        """Writes this task's own files of the ranked designs (one row a design, best first) into ``folder`` and
        returns their names; default none (the engine always writes ``designs.parquet``)."""
        return []

    def design_plots(self, rows: Mapping[str, Sequence[str]], folder: Path) -> list[tuple[str, str]]:
        """Extra plots of ``summary.md``: ``rows`` = ``{"designs": ..., "pretrained": ..., <reference rows>}``
        sequences; writes PNGs into ``folder`` and returns ``(caption, file name)`` each; default none."""
        return []

    # ------------------------------------------------------------------------------------ pretraining
    def pretrain(self, argv: Sequence[str]) -> int:
        """``python -m sepo_ray.pretrain NAME [args]``: (re)build this task's artifacts."""
        raise NotImplementedError(f"task {self.name!r} has no pretraining command")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, L={self.length}, m={self.num_tokens})"
