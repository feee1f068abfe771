"""The text task's evaluation signals (:class:`TextScorer`, read only by the final report) and the diversity
measures they and the validation signal use (:func:`distinct_n`, :func:`repeated_ngrams`)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sepo_ray.tasks.base import Scorer, Task

#: Monte Carlo draws per sequence of the pretrained likelihood (the ELBO's variance, not its mean)
ELBO_DRAWS = 8


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: distinct word n-grams / all word n-grams over the set (Li et al. 2016); 0 for no n-gram."""
    grams = [tuple(w[i : i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngrams(text: str, n: int = 4) -> float:
    """Fraction of a text's word n-grams that occur more than once in it (a degenerate repetition measure)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    counts: dict[tuple, int] = {}
    for g in grams:
        counts[g] = counts.get(g, 0) + 1
    return sum(c for c in counts.values() if c > 1) / len(grams)


class TextScorer(Scorer):
    """The text evaluation table (evaluation signals, read only by the final report): the fine-tuning reward of
    the whole sequence (as training scores it), and of the completion alone (the prompt is the test data's, not
    the model's) the judge (VADER), distinct-n, repetition and the likelihood under the pretrained generator.

    Args:
        reward: the fine-tuning reward spec.
        task: the text task (vocabulary, prompt split, pretrained generator).
        device: where the likelihood's generator runs.
        generator: the generator of ``pretrained_nll_per_token`` (None: the task's pretrained one; a file; or
            False to skip the likelihood, NaN).
        elbo_steps: Monte Carlo draws per sequence of the ELBO.
    """

    metric_labels = {
        "reward_mean": "Reward (sentiment logit) ↑",
        "judge_mean": "Judge (VADER) ↑",
        "pretrained_nll_per_token": "NLL / token under pretrained (nats) ↓",
        "distinct_1": "distinct-1 ↑",
        "distinct_2": "distinct-2 ↑",
        "repeated_4grams": "repeated 4-grams ↓",
    }
    plot_score = "judge"
    score_metric = "judge_mean"  # what the final report ranks rows by: the judge (the reward is trained on)
    plot_label = "VADER compound score of the completion (judge)"
    paired_score = (
        "judge"  # the paper's Table 1 protocol: win rate over the pretrained model on the same prompts
    )
    #: sequences per batch of the likelihood's ELBO (each ``elbo_steps`` rows through the net)
    elbo_batch_size = 32

    def __init__(
        self,
        reward: str,
        task: Task | None = None,
        device: str | torch.device = "cpu",
        generator: str | Path | nn.Module | bool | None = None,
        elbo_steps: int = ELBO_DRAWS,
    ):
        super().__init__(reward)
        if elbo_steps < 1:
            raise ValueError(f"elbo_steps must be >= 1, got {elbo_steps}")
        self.task = task
        self.device = torch.device(device)
        self._generator = generator
        self.elbo_steps = int(elbo_steps)

    @cached_property
    def generator(self) -> nn.Module | None:
        """The SEDD score net of the likelihood (None: skipped)."""
        if self._generator is False or self.task is None:
            return None
        if isinstance(self._generator, nn.Module):
            return getattr(self._generator, "net", self._generator).eval()
        return self.task.build_denoiser(self._generator, device=self.device).net.eval()

    def pretrained_nll(self, sequences: Sequence[str], prompts: Sequence[str], seed: int = 0) -> np.ndarray:
        """Negative ELBO per completion token of each completion given its prompt under the generator, nats:
        float64 (N,) (NaN without a generator or without completion tokens). The texts are re-tokenised, prompt
        and completion apart (so the boundary stays where the sampler put it)."""
        from .likelihood import conditional_elbo

        if self.generator is None or not len(sequences):
            return np.full(len(sequences), np.nan)
        task, vocab = self.task, self.task.vocab
        completions = [s[len(p) :] for s, p in zip(sequences, prompts)]
        prompt_ids = vocab.encode(list(prompts), task.length)  # (N, L), MASK-padded
        completion_ids = vocab.encode(completions, task.length)  # (N, L)
        lengths = (prompt_ids != vocab.mask_id).sum(dim=1)  # (N,)
        x = torch.full_like(prompt_ids, vocab.mask_id)  # (N, L)
        for i, n in enumerate(lengths.tolist()):
            x[i, :n] = prompt_ids[i, :n]
            x[i, n:] = completion_ids[i, : task.length - n]
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        bound, tokens = conditional_elbo(
            self.generator, x, lengths, self.elbo_steps, generator=gen, batch_size=self.elbo_batch_size
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(tokens.numpy() > 0, -bound.numpy() / tokens.numpy(), np.nan)

    def _heads(self, texts: list[str], prompts: Sequence[str] | None) -> list[str]:
        """The prompt text each sequence starts with: ``prompts``, checked; None: the held-out prompt it starts
        with (``TextTask.split_prompt``), or "" without a task."""
        if prompts is None:
            return self.task.split_prompt(texts)[0] if self.task is not None else [""] * len(texts)
        prompts = list(prompts)
        if len(prompts) != len(texts) or not all(t.startswith(p) for t, p in zip(texts, prompts)):
            raise ValueError("prompts must hold, for each sequence, the prompt text it starts with")
        return prompts

    def scores(
        self, sequences: Sequence[str], seed: int = 0, prompts: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """The reward of each whole sequence; the judge, repetition and likelihood of its completion alone."""
        from .judge import vader_sentiment

        texts = list(sequences)
        heads = self._heads(texts, prompts)
        completions = [t[len(p) :] for t, p in zip(texts, heads)]
        self._completions = (tuple(texts), completions)  # the set-level metrics of summarize read them
        return {
            "reward": self.reward(texts),
            "judge": vader_sentiment(completions),
            "pretrained_nll_per_token": self.pretrained_nll(texts, heads, seed),
            "repeated_4grams": np.array([repeated_ngrams(c) for c in completions], dtype=np.float64),
        }

    def completions(self, sequences: Sequence[str]) -> list[str]:
        """The completions of ``sequences``: those :meth:`scores` last split off when it scored these very
        sequences, else each sequence less the held-out prompt it starts with."""
        texts = list(sequences)
        last = getattr(self, "_completions", None)
        if last is not None and last[0] == tuple(texts):
            return list(last[1])
        heads = self._heads(texts, None)
        return [t[len(p) :] for t, p in zip(texts, heads)]

    def summarize(self, scores, sequences: Sequence[str]) -> dict[str, float]:
        completions = self.completions(sequences)
        nll = np.asarray(scores["pretrained_nll_per_token"], dtype=np.float64)
        return {
            "reward_mean": float(np.mean(scores["reward"])),
            "judge_mean": float(np.mean(scores["judge"])),
            "pretrained_nll_per_token": float(np.nanmean(nll)) if np.isfinite(nll).any() else float("nan"),
            "distinct_1": distinct_n(completions, 1),
            "distinct_2": distinct_n(completions, 2),
            "repeated_4grams": float(np.mean(scores["repeated_4grams"])),
        }
