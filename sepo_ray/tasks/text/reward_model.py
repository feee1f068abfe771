"""The text task's reward model: a small GPT-2 sentiment classifier trained here on IMDB (paper Sec. 4.1).

The paper's reward is a GPT-2 reward model trained on HH-RLHF; offline, the embedded default is a
``transformers.GPT2ForSequenceClassification`` built from a config (one output, the logit of "positive") and
trained with binary cross-entropy on the IMDB train split (:func:`~.corpus.imdb_split`), each review cut to its
first ``n_positions`` GPT-2 tokens. Half of the training reviews are cut shorter still (uniform length), so
that the few-dozen-token completions the text task generates are scored by a model that has seen such short
texts.

- :func:`train_reward_model` (:mod:`.reward_training`) trains it (seeded, deterministic for a seed and thread
  count) and writes a Hugging Face folder (``config.json`` + ``model.safetensors``) and ``card.json`` (config,
  data SHA-256, wall time, held-out accuracy / AUROC, environment), atomically (:mod:`.reward_artifact`).
- :class:`SentimentReward` is the task's default reward: it loads the shipped folder
  ``artifacts/reward/`` (no tokenizer files: the GPT-2 BPE comes from :func:`~.corpus.gpt2_tokenizer`) through
  :class:`~sepo_ray.oracles.hf.HFSequenceClassifierReward` and returns float64 logits.
- :func:`main` (:mod:`.reward_cli`) is the ``reward`` part of ``python -m sepo_ray.pretrain text``: it writes
  ``--output/reward/``, never the shipped folder.

The weights are stored in float16 (half the size) with ``config.json`` saying float32, so that
``from_pretrained`` loads them as float32; the held-out figures in the card are those of the stored weights.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import corpus
from .reward_cli import main
from .reward_training import (
    ARTIFACTS_DIR,
    DEFAULT_OUTPUT,
    REBUILD_HINT,
    REWARD_DIR,
    STORE_DTYPES,
    RewardModelConfig,
    build_model,
    heldout_figures,
    predict_logits,
    train_reward_model,
)


class SentimentReward:
    """The text task's default reward (oracle ``text_sentiment``): ``reward(texts) -> float64 (N,)`` logits of
    positive sentiment from the shipped GPT-2 classifier (``artifacts/reward/``, or ``path``).

    Texts are re-tokenised with the GPT-2 BPE and truncated to the model's first ``n_positions`` tokens.
    """

    def __init__(self, path: str | Path | None = None, device: str | None = None, batch_size: int = 64):
        from sepo_ray.oracles.hf import HFSequenceClassifierReward

        folder = Path(path).expanduser() if path is not None else REWARD_DIR
        missing = [f for f in ("config.json", "model.safetensors") if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"text reward model not found ({folder} lacks {', '.join(missing)}): rebuild it with "
                f"`{REBUILD_HINT}` and pass its folder"
            )
        self.path = folder
        # a copy: the HF reward sets a pad token on its tokenizer, the shared one stays as corpus.py built it
        tokenizer = copy.deepcopy(corpus.gpt2_tokenizer())
        self._reward = HFSequenceClassifierReward(
            f"hf:{folder}", tokenizer=tokenizer, batch_size=batch_size, device=device
        )

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("SentimentReward takes a list of texts, not one string")
        return self._reward(list(texts))


__all__ = [
    "ARTIFACTS_DIR",
    "DEFAULT_OUTPUT",
    "REBUILD_HINT",
    "REWARD_DIR",
    "STORE_DTYPES",
    "RewardModelConfig",
    "SentimentReward",
    "build_model",
    "heldout_figures",
    "main",
    "predict_logits",
    "train_reward_model",
]

if __name__ == "__main__":
    sys.exit(main())
