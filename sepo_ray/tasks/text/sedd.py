"""The text task on a public SEDD checkpoint: ``text_sedd``, IMDB continuations over the full GPT-2 vocabulary.

The same prompts, reward, judge and evaluation table as :class:`~sepo_ray.tasks.text.task.TextTask` (``text``),
with the generator a public score-entropy checkpoint (``louaaron/sedd-small`` or ``sedd-medium``, Lou et al.
2024) read unchanged from the folder the user downloaded (config.json + model.safetensors or pytorch_model.bin;
:func:`~sepo_ray.models.sedd.load_sedd`). Its vocabulary is GPT-2's own: ids 0..50,256 are the GPT-2 tokens
(``<|endoftext|>`` = 50,256 included), MASK = 50,257, 50,258 embedding rows. Sequences are 128 tokens with a
prompt context of 32 (SEDD's rotary attention takes any length up to the checkpoint's 1,024); the prompts are
``text``'s review openings (8-16 GPT-2 tokens, so both tasks complete the same texts), encoded without the
compact vocabulary's UNK.

Where the generator comes from (``generator`` setting, ``evaluate --model``): a SEDD checkpoint folder, a file
written by :func:`~sepo_ray.models.save_model` (a fine-tuned run's ``generator.safetensors``) or a folder
holding one; None means the folder in ``$SEPO_RAY_SEDD_DIR``, which is also the pretrained model of the
evaluation table's likelihood column and of the ``pretrained`` rows. The checkpoint is loaded in float32
with dropout 0 (the policy's log-probabilities must not depend on a dropout draw). Nothing here is CPU-specific:
a 170M-parameter (small) or 424M (medium) network with a 50,257-way output is meant for a GPU.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sepo_ray.tasks.base import Scorer

from .data import GPT2_VOCAB_SIZE
from .task import ARTIFACT_DIR, ELBO_DRAWS, TextScorer, TextTask

SEDD_DIR_ENV = "SEPO_RAY_SEDD_DIR"
FULL_VOCAB_SIZE = (
    GPT2_VOCAB_SIZE + 1
)  # embedding rows of a full-vocabulary SEDD net: 50,257 GPT-2 tokens + MASK
NO_GENERATOR = (
    "text_sedd has no shipped generator: pass the downloaded louaaron/sedd-small (or sedd-medium) folder with "
    f"`--set generator=DIR` (run) / `--model DIR` (evaluate), or set {SEDD_DIR_ENV}=DIR"
)


class GPT2Vocab:
    """The full GPT-2 vocabulary plus MASK, with :class:`~sepo_ray.tasks.text.data.CompactVocab`'s interface
    (``encode``, ``decode``, ``decode_batch``, ``mask_id``, ``num_tokens``, ``vocab_size``), so that every
    :class:`TextTask` method reads it unchanged.

    ids 0..50,256 are GPT-2's (``<|endoftext|>`` = 50,256 decodes to its literal text, which the tokenizer
    reads back as the same id); ``mask_id`` = ``num_tokens`` = 50,257; there is no UNK.
    """

    size = GPT2_VOCAB_SIZE
    num_tokens = GPT2_VOCAB_SIZE
    mask_id = GPT2_VOCAB_SIZE
    vocab_size = FULL_VOCAB_SIZE

    def __repr__(self) -> str:
        return f"GPT2Vocab(num_tokens={self.num_tokens}, mask_id={self.mask_id})"

    def encode(self, texts: str | Sequence[str], length: int) -> Tensor:
        """LongTensor (B, length) of GPT-2 ids; longer texts are truncated, shorter ones right-padded with MASK
        (an encoded prompt is the start state of its completion)."""
        from .data import tokenize

        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), length), self.mask_id, dtype=torch.long)  # (B, L)
        for row, ids in enumerate(tokenize(list(texts))):
            ids = ids[:length]
            out[row, : len(ids)] = torch.from_numpy(ids)
        return out

    def decode(self, ids, unk: str = "", mask: str = " <mask>") -> str:
        """One sequence of ids (1-D) -> text: runs of GPT-2 tokens decoded by the tokenizer, each MASK replaced by
        ``mask`` (``""`` drops it). ``unk`` is accepted for CompactVocab's signature (GPT-2 has no UNK)."""
        from .data import gpt2_tokenizer

        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64) if not isinstance(ids, Tensor) else ids).long()
        if ids.ndim != 1:
            raise ValueError(f"decode takes one 1-D sequence, got shape {tuple(ids.shape)}; use decode_batch")
        values = ids.tolist()
        bad = next((i for i in values if not 0 <= i <= self.mask_id), None)
        if bad is not None:
            raise ValueError(f"GPT-2 id {bad} outside [0, {self.mask_id}] (MASK = {self.mask_id})")
        tok, parts, run = gpt2_tokenizer(), [], []
        for i in values:
            if i < self.mask_id:
                run.append(i)
                continue
            if run:
                parts.append(tok.decode(run, clean_up_tokenization_spaces=False))
                run = []
            parts.append(mask)
        if run:
            parts.append(tok.decode(run, clean_up_tokenization_spaces=False))
        return "".join(parts)

    def decode_batch(self, ids, **markers) -> list[str]:
        """(B, L) ids -> B texts (see :meth:`decode`)."""
        return [self.decode(row, **markers) for row in ids]


class SEDDTextScorer(TextScorer):
    """:class:`TextScorer` with the likelihood's ELBO over fewer sequences per forward: 4 sequences x 8 draws x
    128 positions x 50,258 log-scores are 0.8 GB in float32 per tensor."""

    elbo_batch_size = 4


class SEDDTextTask(TextTask):
    """IMDB continuations (128 tokens, prompts of 8-16 in a context of 32) from a public SEDD checkpoint over the
    full GPT-2 vocabulary; ``text``'s prompts, reward and judge."""

    name = "text_sedd"
    description = (
        "IMDB review continuations, public SEDD checkpoint, full GPT-2 vocabulary (--set generator=DIR)"
    )
    length = 128
    prompt_length = 32  # text's openings are 8-16 tokens; a user's own prompts (prompts_file) may be longer
    num_tokens = GPT2_VOCAB_SIZE  # MASK = 50,257
    artifact_dir = ARTIFACT_DIR / "reward"  # the reward classifier; the likelihood's checkpoint: see below
    # default_settings: text's (inherited): J = 8 of the 50,256 other tokens per position, SEPO at every noise
    # level, 8 prompts x 4 completions per iteration; alpha and lr as validated for the small text generator, not
    # for this one
    # 2,048 reward calls; meant for a GPU (num_gpus_per_learner=1): each step of the sampler and the learner runs
    # a 170M+ parameter net with a 50,257-way output over 32 x 128 positions (not yet measured)
    default_iterations = 64

    @cached_property
    def vocab(self) -> GPT2Vocab:
        return GPT2Vocab()

    # --------------------------------------------------------------------------------------- denoiser
    def _source(self, generator: str | Path | None) -> tuple[str, Path]:
        """("sedd", the checkpoint folder) or ("saved", the save_model file) that ``generator`` names."""
        from sepo_ray.models import model_file, read_metadata
        from sepo_ray.models.sedd import WEIGHT_FILES

        if generator is None:
            env = os.environ.get(SEDD_DIR_ENV, "").strip()
            if not env:
                raise ValueError(NO_GENERATOR)
            path = Path(env).expanduser()
            if not path.is_dir():
                raise ValueError(
                    f"{SEDD_DIR_ENV}={env!r} is not a folder: set it to the downloaded sedd-small / sedd-medium "
                    "folder (config.json + model.safetensors or pytorch_model.bin)"
                )
        else:
            path = Path(generator).expanduser()
            if not path.exists():
                raise ValueError(
                    f"generator {str(path)!r} not found: pass a SEDD checkpoint folder (config.json + "
                    "model.safetensors or pytorch_model.bin) or a generator.safetensors written by sepo_ray"
                )
        if path.is_file() and path.name in WEIGHT_FILES and (path.parent / "config.json").is_file():
            if path.suffix != ".safetensors" or "class" not in read_metadata(path):
                path = path.parent  # the weight file of a checkpoint folder: read the folder
        if path.is_dir() and (path / "config.json").is_file():
            return "sedd", path
        return "saved", model_file(path)

    def build_denoiser(
        self, generator: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> nn.Module:
        """The SEDD checkpoint (a folder; None: ``$SEPO_RAY_SEDD_DIR``) or a fine-tuned generator file, float32,
        dropout 0, as a masked denoiser ``z (B, L) -> logits (B, L, 50,257)`` on ``device``."""
        from sepo_ray.diffusion.score_entropy import MaskedView
        from sepo_ray.models import load_model, load_sedd

        kind, path = self._source(generator)
        net = load_sedd(path, "cpu", dropout=0.0) if kind == "sedd" else load_model(path, "cpu")
        vocab_size = getattr(net, "config", {}).get("vocab_size")
        if vocab_size != FULL_VOCAB_SIZE:
            raise ValueError(
                f"{path}: a model over {vocab_size} token ids is not a full-GPT-2-vocabulary SEDD checkpoint "
                f"({FULL_VOCAB_SIZE:,} = 50,257 GPT-2 tokens + MASK); the compact-vocabulary generator belongs "
                "to the `text` task"
            )
        return MaskedView(net.float().to(device)).eval()

    def generator_file(self, generator: str | Path | None = None) -> Path:
        """The weight file ``build_denoiser(generator)`` reads: the folder's model.safetensors (else
        pytorch_model.bin), or the save_model file."""
        from sepo_ray.models.sedd import WEIGHT_FILES

        kind, path = self._source(generator)
        if kind == "saved":
            return path
        found = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if found is None:
            raise ValueError(f"{path} holds no weights: expected one of {list(WEIGHT_FILES)}")
        return found

    # ------------------------------------------------------------------------------------- evaluation
    def scorer(self, device: str | torch.device = "cpu", elbo_steps: int | None = None) -> Scorer:
        """``text``'s table; its likelihood column is under the checkpoint in ``$SEPO_RAY_SEDD_DIR``, NaN (with a
        warning) when that is not set."""
        generator = None
        if not os.environ.get(SEDD_DIR_ENV, "").strip():
            warnings.warn(
                f"{SEDD_DIR_ENV} is not set: pretrained_nll_per_token (the likelihood under the pretrained "
                "SEDD checkpoint) is left NaN; set it to the sedd-small / sedd-medium folder",
                stacklevel=2,
            )
            generator = False
        return SEDDTextScorer(
            self.default_reward,
            self,
            device=device,
            generator=generator,
            elbo_steps=int(elbo_steps or ELBO_DRAWS),
        )

    def evaluation_fingerprint(self) -> str:
        """The reward classifier's files, plus the likelihood's checkpoint (its weight file's path, size and
        modification time; "none" without ``$SEPO_RAY_SEDD_DIR``)."""
        h = hashlib.sha256(super().evaluation_fingerprint().encode())
        if os.environ.get(SEDD_DIR_ENV, "").strip():
            path = self.generator_file(None).resolve()
            stat = path.stat()
            h.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            h.update(b"none")
        return h.hexdigest()[:16]

    def pretrain(self, argv: Sequence[str]) -> int:
        raise NotImplementedError(
            "text_sedd trains nothing itself: its generator is a public SEDD checkpoint (download "
            f"louaaron/sedd-small, pass it with --set generator=DIR or {SEDD_DIR_ENV}) and its reward is the text "
            "task's (python -m sepo_ray.pretrain text --only reward)"
        )
