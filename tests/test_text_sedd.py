"""The text_sedd task on a tiny random SEDD saved in the public checkpoint layout (full GPT-2 vocabulary)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sepo_ray.tasks import get_task
from sepo_ray.tasks.text.sedd import SEDD_DIR_ENV

MASK = 50257


def _hf_config(tokens: int = 50257) -> dict:
    """config.json as SEDD's hub mixin writes it (its nested Hydra config, abridged), for a tiny model."""
    return {
        "ngpus": 8,
        "tokens": tokens,
        "training": {"batch_size": 512, "n_iters": 1300001, "ema": 0.9999},
        "data": {"train": "openwebtext", "valid": "wikitext103"},
        "graph": {"type": "absorb", "file": "data", "report_all": False},
        "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
        "sampling": {"predictor": "euler", "steps": 128, "noise_removal": True},
        "model": {
            "name": "tiny",
            "type": "ddit",
            "hidden_size": 16,
            "cond_dim": 8,
            "length": 1024,
            "n_blocks": 1,
            "n_heads": 2,
            "scale_by_sigma": True,
            "dropout": 0.1,
        },
    }


def _write_checkpoint(folder, tokens: int = 50257):
    """A random SEDD (hidden 16, 1 block, 2 heads, cond 8) as config.json + model.safetensors."""
    from sepo_ray.models import SEDDTransformer

    torch.manual_seed(0)
    net = SEDDTransformer(hidden_size=16, n_heads=2, n_blocks=1, cond_dim=8, vocab_size=tokens + 1)
    with torch.no_grad():  # SEDD zero-initialises adaLN and the output layer: give every weight a value
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_hf_config(tokens)))
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _write_checkpoint(tmp_path_factory.mktemp("sedd") / "sedd-tiny")


@pytest.fixture(scope="module")
def model(checkpoint):
    return get_task("text_sedd").build_denoiser(checkpoint)


def test_full_gpt2_vocabulary_and_prompts():
    from sepo_ray.tasks.text.data import prompted_reviews

    task = get_task("text_sedd")
    assert (task.num_tokens, task.vocab.mask_id, task.length, task.prompt_length) == (50257, MASK, 128, 32)
    assert task.default_reward == get_task("text").default_reward == "text_sentiment"
    assert task.default_settings["objective"] == "sepo_t" and task.default_settings["neighbour_tokens"] == 8
    text = "Kurosawa's cinematography is sublime.<|endoftext|>Next."  # rare words: no UNK here
    ids = task.encode([text])  # (1, 128)
    assert ids.shape == (1, 128) and 50256 in ids[0].tolist() and (ids[0, 16:] == MASK).all()
    assert task.decode(ids) == [text]
    assert task.vocab.decode(torch.tensor([40, MASK, 716])) == "I <mask> am"
    held = task.prompts("test")  # (num, 32)
    assert held.shape[1] == 32 and (held[:, 16:] == MASK).all() and (held[:, 0] < MASK).all()
    assert task.decode(held) == prompted_reviews("test")[0]  # text's openings, every token kept
    assert held.shape[0] == get_task("text").prompts("test").shape[0]  # the same pool, the same draws
    cond = task.evaluation_prompts(0, 5)  # (5, 32)
    assert cond.shape == (5, 32) and cond.dtype == torch.long
    assert ((cond < MASK) | (cond == MASK)).all() and (cond[:, 0] < MASK).all()


def test_public_folder_as_masked_denoiser(checkpoint, model):
    task = get_task("text_sedd")
    net = task.export_denoiser(model)
    assert type(net).__name__ == "SEDDTransformer" and net.config["vocab_size"] == 50258
    assert net.config["dropout"] == 0.0 and not model.training  # the policy's log-probs draw no dropout
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert task.generator_file(checkpoint) == checkpoint / "model.safetensors"
    z = torch.full((2, 128), MASK)
    z[:, :32] = task.evaluation_prompts(0, 2)
    with torch.no_grad():
        logits = model(z)
    assert logits.shape == (2, 128, 50257) and torch.isfinite(logits).all()  # MaskedView drops MASK's column


def test_sample_completes_the_held_out_prompts(model):
    task = get_task("text_sedd")
    texts = task.sample(model, 4, 2, seed=0)
    cond = task.evaluation_prompts(0, 4)
    prompts = task.decode(cond)
    assert len(texts) == 4 and all(t.startswith(p) and len(t) > len(p) for t, p in zip(texts, prompts))
    heads, tails = task.split_prompt(texts, cond)
    assert heads == prompts and [h + t for h, t in zip(heads, tails)] == texts
    assert task.split_prompt(texts)[0] == prompts  # found among the held-out prompts without being told
    real = task.reference_rows()["real_heldout"](0, 4)
    assert [r.startswith(p) for r, p in zip(real, prompts)] == [True] * 4


def test_generator_from_the_environment_or_a_clear_error(checkpoint, monkeypatch):
    task = get_task("text_sedd")
    monkeypatch.delenv(SEDD_DIR_ENV, raising=False)
    for call in (task.build_denoiser, task.generator_file):
        with pytest.raises(ValueError, match="--set generator=DIR.*--model DIR.*SEPO_RAY_SEDD_DIR") as e:
            call(None)
        assert "\n" not in str(e.value)
    with pytest.warns(UserWarning, match="SEPO_RAY_SEDD_DIR is not set"):
        scorer = task.scorer(elbo_steps=1)
    assert np.isnan(scorer.pretrained_nll(["a b"], ["a"])).all()
    monkeypatch.setenv(SEDD_DIR_ENV, str(checkpoint.parent / "nowhere"))
    with pytest.raises(ValueError, match="is not a folder"):
        task.build_denoiser()
    monkeypatch.setenv(SEDD_DIR_ENV, str(checkpoint))
    assert task.generator_file(None) == checkpoint / "model.safetensors"
    assert type(task.build_denoiser().net).__name__ == "SEDDTransformer"
    fingerprint = task.evaluation_fingerprint()
    assert len(fingerprint) == 16 and fingerprint != get_task("text").evaluation_fingerprint()
    texts = task.sample(task.build_denoiser(), 2, 2, seed=0)
    nll = task.scorer(elbo_steps=1).pretrained_nll(texts, task.split_prompt(texts)[0])
    assert nll.shape == (2,) and np.isfinite(nll).all() and (nll > 0).all()


def test_fine_tuned_file_reloads_and_wrong_vocabularies_are_refused(checkpoint, model, tmp_path):
    from sepo_ray.models import save_model
    from sepo_ray.tasks.text.task import ARTIFACT_DIR

    task = get_task("text_sedd")
    saved = save_model(task.export_denoiser(model), tmp_path / "iter_0001" / "generator.safetensors")
    z = torch.randint(0, MASK + 1, (2, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(z)
        for source in (saved, saved.parent, checkpoint / "model.safetensors"):
            assert torch.equal(task.build_denoiser(source)(z), expected), source
    assert task.generator_file(saved.parent) == saved
    with pytest.raises(ValueError, match="not a full-GPT-2-vocabulary SEDD checkpoint.*`text` task") as e:
        task.build_denoiser(ARTIFACT_DIR / "generator.safetensors")  # the shipped compact generator
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="model over 4098 token ids is not a full-GPT-2-vocabulary"):
        task.build_denoiser(_write_checkpoint(tmp_path / "compact", tokens=4097))
    with pytest.raises(ValueError, match="not found"):
        task.build_denoiser(tmp_path / "nothing")


def test_encode_prompts_errors():
    task = get_task("text_sedd")
    ids = task.encode_prompts(["This film", "A slow start, but worth it"])
    assert ids.shape == (2, 32) and (ids[0, 2:] == MASK).all()
    with pytest.raises(ValueError, match="^prompt 2 is empty$"):
        task.encode_prompts(["fine", "   "])
    with pytest.raises(ValueError, match="no prompts"):
        task.encode_prompts([])
    long = " ".join(["word"] * 40)
    with pytest.raises(
        ValueError, match=r"prompt 1 is 40 GPT-2 tokens, .*text_sedd task \(32 of its 128 tokens\)"
    ):
        task.encode_prompts([long])
    with pytest.raises(ValueError, match=r"prompt 1 is 40 GPT-2 tokens, .*text task \(16 of its 64 tokens\)"):
        get_task("text").encode_prompts([long])


def test_one_sepo_update_on_the_full_vocabulary(checkpoint):
    from sepo_ray.sepo import update
    from sepo_ray.settings import SEPO_SETTINGS

    task = get_task("text_sedd")
    settings = {k: s.default for k, s in SEPO_SETTINGS.items()} | dict(task.default_settings)
    settings.update(denoise_steps=2, kl_steps=1, noise_states=1)
    spec = update.UpdateSpec.from_settings(settings, task.num_tokens)
    policy, reference = task.build_denoiser(checkpoint), task.build_denoiser(checkpoint).requires_grad_(False)
    prompt = task.evaluation_prompts(0, 2).repeat_interleave(2, dim=0)  # 2 prompts x G = 2
    batch = update.rollout(
        policy, 4, task.length, spec, generator=torch.Generator().manual_seed(0), prompt=prompt
    )
    assert (batch["x"][:, :32][prompt < MASK] == prompt[prompt < MASK]).all() and (batch["x"] < MASK).all()
    batch["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)
    policy.train()
    total, stats = update.update_loss(
        policy, reference, batch, spec, generator=torch.Generator().manual_seed(1)
    )
    total.backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert torch.isfinite(total) and float(stats["kl"]) == pytest.approx(0.0, abs=1e-6)  # policy == reference
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_evaluate_a_checkpoint_folder_against_the_pretrained_one(checkpoint, monkeypatch, tmp_path):
    import pandas as pd

    from sepo_ray import evaluate

    monkeypatch.setenv(SEDD_DIR_ENV, str(checkpoint))
    argv = ["text_sedd", "--model", f"pretrained,{checkpoint}", "--num-samples", "2", "--seeds", "0"]
    assert evaluate.main(argv + ["--steps", "2", "--elbo-steps", "1", "--output", str(tmp_path / "ev")]) == 0
    samples = pd.read_parquet(tmp_path / "ev" / "samples.parquet")
    assert set(samples["row"]) == {"pretrained", "sedd-tiny", "real_heldout"}
    assert (samples["prompt"] + samples["completion"] == samples["sequence"]).all()
    assert np.isfinite(samples["pretrained_nll_per_token"]).all() and np.isfinite(samples["reward"]).all()
    by_row = {r: g["prompt"].tolist() for r, g in samples.groupby("row")}
    assert by_row["pretrained"] == by_row["sedd-tiny"] == by_row["real_heldout"]
