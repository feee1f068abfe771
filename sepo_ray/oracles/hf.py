"""Any local Hugging Face sequence-classification model as a reward: ``--reward hf:DIR`` (or ``hf:DIR#LABEL``).

The sequences (text, as the task decodes them) are re-tokenised with the model's own tokenizer, batched, and
scored on the actor's device (a GPU when the oracle actor has one). The reward is the model's logit for a
one-output model (a reward model, e.g. GPT-2 trained on HH-RLHF), or the log-odds of the chosen label,
log p(label) - log(1 - p(label)), for a classifier with several labels (``#LABEL`` by name or index; a
multi-label model without a chosen label is refused, since no single number is "the" reward then).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PREFIX = "hf:"


def parse_spec(spec: str) -> tuple[Path, str | None]:
    """``"hf:DIR#LABEL"`` -> (DIR, LABEL or None)."""
    body = spec[len(PREFIX) :]
    folder, _, label = body.partition("#")
    return Path(folder).expanduser(), (label or None)


def check_spec(spec: str) -> dict:
    """Cheap checks of an ``hf:`` spec (reads config.json only); ValueError naming what is wrong. -> config."""
    folder, label = parse_spec(spec)
    where = f"reward {spec!r}"
    if not folder.is_dir():
        raise ValueError(f"{where}: {folder} is not a directory")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{where}: {folder} has no config.json (not a Hugging Face model folder)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: {folder / 'config.json'} is not valid JSON ({e})") from e
    archs = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(
            f"{where}: {folder} holds {', '.join(archs) or 'a model without architectures'}, "
            "not a ...ForSequenceClassification model"
        )
    labels = _labels(config)
    if len(labels) > 1 and label is None:
        raise ValueError(
            f"{where}: the model has {len(labels)} labels ({', '.join(labels)}); choose one with hf:DIR#LABEL"
        )
    if label is not None and label not in labels and not (label.isdigit() and int(label) < len(labels)):
        raise ValueError(f"{where}: no label {label!r}; labels: {', '.join(labels)}")
    return config


def _labels(config: dict) -> list[str]:
    n = int(config.get("num_labels") or len(config.get("id2label") or {}) or 1)
    id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return [str(id2label.get(i, i)) for i in range(n)]


class HFSequenceClassifierReward:
    """Callable reward: ``reward(texts) -> float64 (N,)`` from a local sequence-classification model folder.

    Args:
        spec: ``hf:DIR`` or ``hf:DIR#LABEL``.
        tokenizer: a tokenizer to use when the folder has none (e.g. the GPT-2 BPE the task builds offline).
        batch_size: texts per forward. device: "cuda" when available, else "cpu" (default).
    """

    def __init__(self, spec: str, tokenizer=None, batch_size: int = 64, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        config = check_spec(spec)
        folder, label = parse_spec(spec)
        self.spec = spec
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(self.device).eval()
        if tokenizer is None:
            files = ("tokenizer.json", "vocab.json", "tokenizer_config.json", "spiece.model", "vocab.txt")
            if not any((folder / f).is_file() for f in files):
                raise ValueError(
                    f"reward {spec!r}: {folder} has no usable tokenizer files ({', '.join(files)})"
                )
            try:
                tokenizer = AutoTokenizer.from_pretrained(folder)
            except (OSError, ValueError) as e:
                raise ValueError(f"reward {spec!r}: {folder} has no usable tokenizer files ({e})") from e
        vocab = int(getattr(self.model.config, "vocab_size", 0) or 0)
        if len(tokenizer) <= 1 or (vocab and len(tokenizer) > vocab):
            # transformers 5 builds a one-token tokenizer from incomplete files without a word: refuse it
            raise ValueError(
                f"reward {spec!r}: the tokenizer has {len(tokenizer)} tokens for a model of {vocab}; "
                "its files are incomplete"
            )
        if tokenizer.pad_token is None:  # GPT-2 has none: pad with EOS (attention masks it out)
            tokenizer.pad_token = tokenizer.eos_token
        self.model.config.pad_token_id = tokenizer.pad_token_id
        self.tokenizer = tokenizer
        labels = _labels(config)
        self.label = None if len(labels) == 1 else (labels.index(label) if label in labels else int(label))
        self.max_length = int(getattr(self.model.config, "n_positions", None) or tokenizer.model_max_length)
        self.batch_size = int(batch_size)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.no_grad():
                logits = self.model(**enc).logits.float()  # (b, num_labels)
            if self.label is None:
                out.append(logits[:, 0])
            else:
                logp = torch.log_softmax(logits, dim=-1)  # (b, num_labels)
                chosen = logp[:, self.label]
                out.append(chosen - torch.log1p(-chosen.exp().clamp(max=1 - 1e-7)))  # log-odds
        return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)
