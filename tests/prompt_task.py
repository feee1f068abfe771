"""A prompted toy task for the tests: complete a 1-4 letter prompt by repeating its first letter."""

from __future__ import annotations

import numpy as np
import torch

from sepo_ray.tasks.toy import ToyTask

PROMPTS = ["AAAA", "CC", "GGG", "T", "ACGT", "CA", "GT", "TTTT"]


def echo(sequences):
    """Reward: the fraction of letters after the first four equal to the first letter."""
    return np.array([np.mean([c == s[0] for c in s[4:]]) for s in sequences])


class EchoTask(ToyTask):
    name = "echo"
    description = "12 letters over ACGT after a prompt of up to 4; reward = echo the prompt's first letter"
    length = 12
    prompt_length = 4
    default_reward = "tests.prompt_task:echo"

    def encode_prompts(self, texts) -> torch.Tensor:
        texts = list(texts)
        for i, text in enumerate(texts, start=1):
            if not text.strip():
                raise ValueError(f"prompt {i} is empty")
            if len(text) > self.prompt_length or set(text) - set("ACGT"):
                raise ValueError(f"prompt {i} must be 1-{self.prompt_length} letters of ACGT: {text!r}")
        out = torch.full((len(texts), self.prompt_length), self.num_tokens, dtype=torch.long)
        for i, p in enumerate(texts):
            out[i, : len(p)] = torch.tensor(["ACGT".index(c) for c in p])
        return out

    def prompts(self, split: str = "train") -> torch.Tensor:
        out = torch.full((len(PROMPTS), self.prompt_length), self.num_tokens, dtype=torch.long)  # MASK-padded
        for i, p in enumerate(PROMPTS):
            out[i, : len(p)] = torch.tensor(["ACGT".index(c) for c in p])
        return out
