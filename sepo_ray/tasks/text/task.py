"""The text task: prompt-conditioned IMDB review continuations with a score-entropy (SEDD) generator.

A sequence is 64 compact-vocabulary tokens: a prompt (the first 8-16 GPT-2 tokens of a review, MASK-padded to
16) and its completion. The generator is the shipped SEDD-layout transformer seen as a masked denoiser
(:class:`~sepo_ray.diffusion.score_entropy.MaskedView`), so the engine's sampler, SEPO scores, SNIS and KL run
on it unchanged. The default reward is the shipped GPT-2 sentiment classifier's logit (``text_sentiment``);
the held-out judge is VADER (never trained), reported as ``heldout_score``, with distinct-2 as
``heldout_realism`` (a reward-hacked model repeats itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sepo_ray.tasks.base import Scorer, Task

from .data import DEFAULT_VOCAB_SIZE

ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
TRAIN_PROMPTS = 4096  # training prompts drawn from the train split (a prefix of its seeded order)


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
    """The text evaluation table: fine-tuning reward, held-out judge, diversity."""

    metric_labels = {
        "reward_mean": "Reward (sentiment logit) ↑",
        "judge_mean": "Judge (VADER) ↑",
        "distinct_1": "distinct-1 ↑",
        "distinct_2": "distinct-2 ↑",
        "repeated_4grams": "repeated 4-grams ↓",
    }
    plot_score = "judge"
    plot_label = "VADER compound score (held-out judge)"
    paired_score = (
        "judge"  # the paper's Table 1 protocol: win rate over the pretrained model on the same prompts
    )

    def scores(self, sequences: Sequence[str], seed: int = 0) -> dict[str, np.ndarray]:
        from .judge import vader_sentiment

        texts = list(sequences)
        return {
            "reward": self.reward(texts),
            "judge": vader_sentiment(texts),
            "repeated_4grams": np.array([repeated_ngrams(t) for t in texts], dtype=np.float64),
        }

    def summarize(self, scores, sequences: Sequence[str]) -> dict[str, float]:
        texts = list(sequences)
        return {
            "reward_mean": float(np.mean(scores["reward"])),
            "judge_mean": float(np.mean(scores["judge"])),
            "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2),
            "repeated_4grams": float(np.mean(scores["repeated_4grams"])),
        }


class TextTask(Task):
    """IMDB continuations (64 tokens, prompts of 8-16), compact GPT-2 vocabulary, positive sentiment reward."""

    name = "text"
    description = "IMDB review continuations (SEDD generator, prompts, GPT-2 sentiment reward, VADER judge)"
    length = 64
    prompt_length = 16
    num_tokens = DEFAULT_VOCAB_SIZE + 1  # the kept GPT-2 tokens + UNK; MASK = num_tokens
    default_reward = "text_sentiment"
    artifact_dir = ARTIFACT_DIR
    # 4,096 other tokens per position: SNIS over J = 8 proposed ones (weight 4096 / 8 keeps the sum unbiased);
    # 8 prompts x 4 completions per iteration; T = 32.
    default_settings = {"neighbour_tokens": 8, "prompts_per_batch": 8, "group_size": 4}
    oracles = {"text_sentiment": "sepo_ray.tasks.text.reward_model:SentimentReward"}

    @cached_property
    def vocab(self):
        from .data import compact_vocab

        vocab = compact_vocab(DEFAULT_VOCAB_SIZE)
        if vocab.num_tokens != self.num_tokens:
            raise ValueError(
                f"compact vocabulary has {vocab.num_tokens} tokens, the task expects {self.num_tokens}"
            )
        return vocab

    # ------------------------------------------------------------------------------------- vocabulary
    def decode(self, x: Tensor | np.ndarray) -> list[str]:
        """Compact ids (N, L) -> texts (prompt + completion); UNK and MASK are dropped."""
        return self.vocab.decode_batch(
            torch.as_tensor(np.asarray(x.cpu() if torch.is_tensor(x) else x)), unk="", mask=""
        )

    def encode(self, sequences: Sequence[str]) -> Tensor:
        return self.vocab.encode(list(sequences), self.length)

    def prompts(self, split: str = "train") -> Tensor:
        """(num_prompts, 16) compact ids of review openings, MASK-padded (train: 4,096 of the train split;
        heldout: every held-out review)."""
        return self._prompts(split)

    def _prompts(self, split: str) -> Tensor:
        cache = self.__dict__.setdefault("_prompt_cache", {})
        if split not in cache:
            from .data import prompts

            texts = prompts(split, count=TRAIN_PROMPTS if split == "train" else None)
            ids = self.vocab.encode(texts, self.prompt_length)  # (num, P) MASK-padded
            empty = (ids == self.vocab.mask_id).all(dim=1)
            cache[split] = ids[~empty]
        return cache[split]

    # --------------------------------------------------------------------------------------- denoiser
    def build_denoiser(
        self, generator: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> nn.Module:
        """The SEDD generator (shipped, or a file written by ``save_model``) as a masked denoiser."""
        from sepo_ray.diffusion.score_entropy import MaskedView
        from sepo_ray.models import load_model, model_file

        path = self.generator_file(generator)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; rebuild it with: python -m sepo_ray.pretrain text --only generator"
            )
        net = load_model(model_file(path), device)
        if getattr(net, "config", {}).get("vocab_size") != self.num_tokens + 1:
            raise ValueError(
                f"{path}: a generator over {net.config.get('vocab_size')} token ids, the text task's vocabulary has "
                f"{self.num_tokens + 1} (incl. MASK); a public SEDD checkpoint (full GPT-2 vocabulary) is not this task"
            )
        return MaskedView(net).eval()

    def generator_file(self, generator: str | Path | None = None) -> Path:
        if generator is None:
            return ARTIFACT_DIR / "generator.safetensors"
        from sepo_ray.models import model_file

        return model_file(generator)

    def export_denoiser(self, model: nn.Module) -> nn.Module:
        return getattr(model, "net", model)

    # ------------------------------------------------------------------------------------- evaluation
    def heldout(self, sequences: Sequence[str]) -> dict[str, float]:
        from .judge import vader_sentiment

        texts = list(sequences)
        return {
            "heldout_score": float(np.mean(vader_sentiment(texts))),
            "heldout_realism": distinct_n(texts, 2),
        }

    def scorer(self, device: str | torch.device = "cpu", elbo_steps: int | None = None) -> Scorer:
        return TextScorer(self.default_reward)

    def reference_rows(self) -> dict[str, Callable[[int, int], list[str]]]:
        """``real_heldout``: the first 64 compact tokens of held-out reviews (decoded as the generator's are)."""

        def draw(seed: int, num: int) -> list[str]:
            from .data import training_sequences

            chunks = training_sequences(self.length, "heldout", self.vocab, max_chunks_per_review=1)
            if num > len(chunks):
                raise ValueError(
                    f"num_samples: real_heldout has only {len(chunks)} sequences, asked for {num}"
                )
            pick = np.random.default_rng(int(seed)).choice(len(chunks), size=num, replace=False)
            return self.decode(chunks[torch.as_tensor(pick)])

        return {"real_heldout": draw}

    def pretrain(self, argv: Sequence[str]) -> int:
        from .pretrain import main

        return main(list(argv))
