"""The text task end to end on a tiny random SEDD generator: prompts, decoding, one SEPO run, the evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from sepo_ray.tasks import get_task
from sepo_ray.tasks.text.task import distinct_n, repeated_ngrams


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    from sepo_ray.models import SEDDTransformer, save_model

    task = get_task("text")
    torch.manual_seed(0)
    net = SEDDTransformer(
        hidden_size=16,
        n_heads=2,
        n_blocks=1,
        cond_dim=8,
        vocab_size=task.num_tokens + 1,
        max_length=64,
        dropout=0.0,
    )
    return save_model(net, tmp_path_factory.mktemp("gen") / "generator.safetensors")


def test_prompts_and_vocabulary():
    task = get_task("text")
    held, train = task.prompts("test"), task.prompts("train")
    assert held.shape[1] == train.shape[1] == task.prompt_length == 16
    assert ((held != task.num_tokens).sum(1) >= 1).all()  # no empty prompt
    text = task.decode(held[:3])
    assert all(isinstance(t, str) and t for t in text)
    assert task.decode(task.encode(["This movie was great fun."])) == ["This movie was great fun."]


def test_diversity_metrics_by_hand():
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == 2 / 3
    assert repeated_ngrams("a b c d a b c d") == 2 / 5
    assert distinct_n([""], 2) == 0.0


def test_sedd_generator_as_masked_denoiser_samples_after_the_prompt(tiny_generator):
    task = get_task("text")
    model = task.build_denoiser(tiny_generator)
    prompt = task.prompts("test")[:4]
    from sepo_ray import diffusion

    x = diffusion.sample(
        model, 4, task.length, 4, generator=torch.Generator().manual_seed(0), prompt=prompt
    ).x
    given = prompt != task.num_tokens
    assert torch.equal(x[:, :16][given], prompt[given]) and (x < task.num_tokens).all()
    assert type(task.export_denoiser(model)).__name__ == "SEDDTransformer"
    with pytest.raises(ValueError, match="model weights must be"):
        task.build_denoiser(tiny_generator.parent / "nothing.safetensors")


def test_text_run_with_a_tiny_generator(ray_session, tmp_path, tiny_generator):
    from sepo_ray.run import main

    rc = main(
        ["text", "--output", str(tmp_path / "run"), "--iterations", "2", "--no-eval"]
        + ["--reward", "sepo_ray.tasks.toy:fraction_a", "--set", f"generator={tiny_generator}"]
        + ["--set", "prompts_per_batch=2", "--set", "group_size=2", "--set", "denoise_steps=4"]
    )
    assert rc == 0
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [h["iteration"] for h in record["history"]] == [1, 2]
    saved = tmp_path / "run" / record["final_checkpoint"] / "generator.safetensors"
    assert get_task("text").build_denoiser(saved) is not None  # the checkpoint reloads as a text generator
