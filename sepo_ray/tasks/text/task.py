"""The text task: prompt-conditioned IMDB review continuations with a score-entropy (SEDD) generator.

A sequence is 64 compact-vocabulary tokens: a prompt (the first 8-16 GPT-2 tokens of a review, MASK-padded to
16) and its completion. The generator is the shipped SEDD-layout transformer seen as a masked denoiser
(:class:`~sepo_ray.diffusion.score_entropy.MaskedView`), so the engine's sampler, SEPO scores, SNIS and KL run
on it unchanged. The default reward is the shipped GPT-2 sentiment classifier's logit (``text_sentiment``);
the held-out judge is VADER (never trained), reported as ``heldout_score``, with distinct-2 as
``heldout_realism`` (a reward-hacked model repeats itself). The evaluation table adds the completions' likelihood
under the pretrained generator (:mod:`.likelihood`) and compares every row with the pretrained one on the same
held-out prompts; its ``real_heldout`` row is the real continuation of those prompts.
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
ELBO_DRAWS = (
    8  # Monte Carlo draws per sequence of the pretrained likelihood (the ELBO's variance, not its mean)
)


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
    """The text evaluation table: fine-tuning reward, held-out judge, diversity, likelihood under the pretrained
    generator.

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
    score_metric = "judge_mean"  # what a comparison ranks by: the held-out judge (the reward is trained on)
    plot_label = "VADER compound score (held-out judge)"
    paired_score = (
        "judge"  # the paper's Table 1 protocol: win rate over the pretrained model on the same prompts
    )
    #: sequences per batch of the likelihood's ELBO (each ``elbo_steps`` rows through the net)
    elbo_batch_size = 32

    def __init__(
        self,
        reward: str,
        task: TextTask | None = None,
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

    def scores(
        self, sequences: Sequence[str], seed: int = 0, prompts: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        from .judge import vader_sentiment

        texts = list(sequences)
        prompts = [""] * len(texts) if prompts is None else list(prompts)
        if len(prompts) != len(texts) or not all(t.startswith(p) for t, p in zip(texts, prompts)):
            raise ValueError("prompts must hold, for each sequence, the prompt text it starts with")
        return {
            "reward": self.reward(texts),
            "judge": vader_sentiment(texts),
            "pretrained_nll_per_token": self.pretrained_nll(texts, prompts, seed),
            "repeated_4grams": np.array([repeated_ngrams(t) for t in texts], dtype=np.float64),
        }

    def summarize(self, scores, sequences: Sequence[str]) -> dict[str, float]:
        texts = list(sequences)
        nll = np.asarray(scores["pretrained_nll_per_token"], dtype=np.float64)
        return {
            "reward_mean": float(np.mean(scores["reward"])),
            "judge_mean": float(np.mean(scores["judge"])),
            "pretrained_nll_per_token": float(np.nanmean(nll)) if np.isfinite(nll).any() else float("nan"),
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
    # SEPO at every noise level with a light KL (docs/results.md, "Text: the default run"): the t -> 0
    # objective's token-proposal weight 4,096 / J made its updates too noisy to improve the judge at this budget
    default_settings = {
        "objective": "sepo_t",
        "kl_alpha": 0.1,
        "neighbour_tokens": 8,
        "prompts_per_batch": 8,
        "group_size": 4,
    }
    default_iterations = 24  # 768 reward calls, about 7 minutes on 2 CPUs

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
        return self._prompts(split)[0]

    def _prompts(self, split: str) -> tuple[Tensor, list[str]]:
        """(prompt ids (num, P), the reviews they open) of a split, empty prompts left out; cached."""
        cache = self.__dict__.setdefault("_prompt_cache", {})
        if split not in cache:
            from .data import prompted_reviews

            texts, reviews = prompted_reviews(split, count=TRAIN_PROMPTS if split == "train" else None)
            ids = self.vocab.encode(texts, self.prompt_length)  # (num, P) MASK-padded
            keep = ~(ids == self.vocab.mask_id).all(dim=1)  # (num,)
            cache[split] = ids[keep], [r for r, k in zip(reviews, keep.tolist()) if k]
        return cache[split]

    def encode_prompts(self, texts: Sequence[str]) -> Tensor:
        """A user's prompts -> (N, 16) compact ids, MASK-padded. ValueError naming the prompt (1-based) for an
        empty one (nothing but white space) or one of more than 16 GPT-2 tokens (the prompt context)."""
        from .data import tokenize

        texts = list(texts)
        if not texts:
            raise ValueError("no prompts given")
        for i, (text, ids) in enumerate(zip(texts, tokenize(texts)), start=1):
            if not text.strip():
                raise ValueError(f"prompt {i} is empty")
            if len(ids) > self.prompt_length:
                raise ValueError(
                    f"prompt {i} is {len(ids)} GPT-2 tokens, longer than the prompt context of the {self.name} task "
                    f"({self.prompt_length} of its {self.length} tokens): {text[:40]!r}"
                )
        return self.vocab.encode(texts, self.prompt_length)  # (N, P)

    def split_prompt(
        self, sequences: Sequence[str], prompts: Tensor | None = None
    ) -> tuple[list[str], list[str]]:
        """Decoded sequences -> (prompt, completion) texts. The prompt is the decoded row of ``prompts`` when the
        sequence starts with it; otherwise the longest held-out prompt the sequence starts with ("" if none)."""
        sequences = list(sequences)
        given = self.decode(prompts) if prompts is not None else [None] * len(sequences)
        heads = []
        for seq, head in zip(sequences, given):
            if head is None or not seq.startswith(head):
                head = self._known_prompt(seq)
            heads.append(head)
        return heads, [s[len(h) :] for s, h in zip(sequences, heads)]

    def _known_prompt(self, sequence: str) -> str:
        """The longest decoded held-out prompt that ``sequence`` starts with, or ""."""
        known = self.__dict__.get("_decoded_heldout")
        if known is None:
            known = self.__dict__["_decoded_heldout"] = set(self.decode(self.prompts("heldout")))
        longest = max(map(len, known), default=0)
        for end in range(min(len(sequence), longest), 0, -1):
            if sequence[:end] in known:
                return sequence[:end]
        return ""

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
                f"{self.num_tokens + 1} (incl. MASK); a public SEDD checkpoint (full GPT-2 vocabulary) is the `text_sedd` task's"
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
        return TextScorer(self.default_reward, self, device=device, elbo_steps=int(elbo_steps or ELBO_DRAWS))

    def reference_rows(self) -> dict[str, Callable[[int, int], list[str]]]:
        """``real_heldout``: for each held-out prompt the evaluation draws at a seed (``evaluation_prompts``), the
        first 64 compact tokens of the review it opens (decoded as the generator's are): the real continuation of
        the same prompt, so the row pairs with the generators' rows prompt by prompt."""
        from sepo_ray.tasks.base import prompt_draw

        def draw(seed: int, num: int) -> list[str]:
            pool, reviews = self._prompts("heldout")
            pick = prompt_draw(seed, num, len(pool)).tolist()
            return self.decode(self.vocab.encode([reviews[i] for i in pick], self.length))

        return {"real_heldout": draw}

    # ``sepo-ray design text``: the judge and likelihood of each completion, designs.jsonl (:mod:`.design`)
    def design_column_help(self) -> dict[str, str]:
        from .design import COLUMN_HELP

        return dict(COLUMN_HELP)

    def design_columns(self, sequences, seed=0, prompts=None, device="cpu") -> dict[str, np.ndarray]:
        from .judge import vader_sentiment

        texts = list(sequences)
        heads = [""] * len(texts) if prompts is None else list(prompts)
        return {  # the scorer's per-sequence scores but the reward, which the engine calls and counts
            "judge": vader_sentiment(texts),
            "pretrained_nll_per_token": self.scorer(device=device).pretrained_nll(texts, heads, seed),
            "repeated_4grams": np.array([repeated_ngrams(t) for t in texts], dtype=np.float64),
        }

    def write_designs(self, table, folder: Path) -> list[str]:
        from .design import write_jsonl

        return write_jsonl(table, folder)

    def pretrain(self, argv: Sequence[str]) -> int:
        from .pretrain import main

        return main(list(argv))
