"""The generic denoiser pretraining helper (sepo_ray.tasks.pretrain) on a toy setting: L = 8 over 4 tokens, every
training sequence an "AC" repeat (tokens 0, 1, 0, 1, ...) — a few seconds on one CPU thread."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import sepo_ray
from sepo_ray.diffusion import sample
from sepo_ray.models import ConvDenoiser, load_model
from sepo_ray.tasks.pretrain import DenoiserTraining, pretrain_denoiser, save_generator

LENGTH, NUM_TOKENS = 8, 4
PATTERN = torch.tensor([0, 1] * (LENGTH // 2))  # (L,) "ACAC..."
TOKENS = PATTERN.repeat(32, 1)  # (32, L)
TRAINING = DenoiserTraining(batch_size=16, steps=60, lr=1e-2, warmup_steps=5, seed=0, log_every=20)


def fresh_model(seed: int = 0) -> ConvDenoiser:
    torch.manual_seed(seed)
    return ConvDenoiser(hidden_dim=8, num_cnn_stacks=1, num_tokens=NUM_TOKENS)


def pattern_rate(model: ConvDenoiser, seed: int = 0, n: int = 200) -> float:
    """Share of n sampled sequences (8 steps) equal to the training pattern."""
    x = sample(model, n, LENGTH, 8, generator=torch.Generator().manual_seed(seed)).x  # (n, L)
    return float((x == PATTERN).all(dim=1).float().mean())


@pytest.fixture(scope="module")
def trained():
    lines: list[str] = []
    model, stats = pretrain_denoiser(fresh_model(), TOKENS, TRAINING, log=lines.append)
    return model, stats, lines


def test_training_lowers_the_loss_and_reports_it(trained):
    model, stats, lines = trained
    assert not model.training  # returned in eval mode
    assert len(lines) == 3 and lines[-1].startswith("step 60/60  train NELBO")
    first, last = (float(line.split("NELBO ")[1].split()[0]) for line in (lines[0], lines[-1]))
    assert last < 0.5 * first, lines  # bits per token, the mean of 20 steps each
    assert math.isclose(stats["final_train_nelbo_bits_per_token"], last, abs_tol=5e-5)
    assert stats["steps"] == 60 and set(stats["training_time_s"]) == {"wall", "process_cpu"}
    assert stats["training_time_s"]["wall"] > 0


def test_trained_model_samples_the_pattern_far_more_often_than_the_untrained_one(trained):
    before, after = pattern_rate(fresh_model()), pattern_rate(trained[0])
    # untrained: about (1/4)^8 per sequence; trained: most sequences
    assert before < 0.05 and after > 0.5, (before, after)


def test_same_seed_same_weights_and_augment_draws_from_the_loop_generator():
    calls = []

    def swap_halves(x0, generator):  # a label-preserving augmentation that also consumes the generator
        calls.append(x0.shape)
        flip = torch.rand(x0.shape[0], generator=generator) < 0.5  # (B,)
        return torch.where(flip[:, None], x0.roll(2, dims=1), x0)  # (B, L)

    short = DenoiserTraining(batch_size=8, steps=4, warmup_steps=1, log_every=2)
    a, _ = pretrain_denoiser(fresh_model(), TOKENS, short, log=lambda _: None)
    b, _ = pretrain_denoiser(fresh_model(), TOKENS, short, log=lambda _: None)
    c, _ = pretrain_denoiser(fresh_model(), TOKENS, short, augment=swap_halves, log=lambda _: None)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert calls == [torch.Size([8, LENGTH])] * 4
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())


def test_saved_folder_loads_with_identical_logits(trained, tmp_path):
    model = trained[0]
    path = save_generator(model, tmp_path / "gen", card={"name": "toy", "steps": 60})
    assert path == tmp_path / "gen" / "generator.safetensors"
    loaded = load_model(tmp_path / "gen" / "generator.safetensors")
    z = torch.randint(0, NUM_TOKENS + 1, (5, LENGTH), generator=torch.Generator().manual_seed(1))  # (5, L)
    assert torch.equal(model(z), loaded(z))
    card = json.loads((tmp_path / "gen" / "generator.json").read_text())
    assert card["name"] == "toy" and len(card["file_sha256"]) == 64


def test_save_generator_refuses_an_existing_generator_and_the_package(trained, tmp_path):
    model = trained[0]
    save_generator(model, tmp_path)
    with pytest.raises(ValueError, match="already holds generator.safetensors") as err:
        save_generator(model, tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "generator.json").write_text("{}")
    save_generator(model, tmp_path, overwrite=True)  # allowed; the stale card goes with the old weights
    assert not (tmp_path / "generator.json").exists()
    package = Path(sepo_ray.__file__).resolve().parent
    for inside in (package, package / "tasks" / "toy_artifacts_that_do_not_exist"):
        with pytest.raises(ValueError, match="inside the installed sepo_ray package"):
            save_generator(model, inside, overwrite=True)
    assert not (package / "tasks" / "toy_artifacts_that_do_not_exist").exists()
    assert not (package / "generator.safetensors").exists()


@pytest.mark.parametrize(
    ("tokens", "training", "match"),
    [
        (TOKENS.float(), TRAINING, "LongTensor"),
        (TOKENS.int(), TRAINING, "LongTensor"),
        (TOKENS[0], TRAINING, r"shape \(N, L\)"),
        (TOKENS[:0], TRAINING, "empty"),
        (TOKENS + 3, TRAINING, r"0\.\.3 .*got 3\.\.4"),
        (TOKENS - 1, TRAINING, r"got -1\.\.0"),
        (TOKENS, DenoiserTraining(steps=0), "steps must be >= 1"),
        (TOKENS, DenoiserTraining(batch_size=0), "batch_size must be >= 1"),
        (TOKENS, DenoiserTraining(lr=0.0), "lr and grad_clip must be > 0"),
    ],
)
def test_bad_inputs_raise_one_line_errors(tokens, training, match):
    model = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match) as err:
        pretrain_denoiser(model, tokens, training, log=lambda _: None)
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained


def test_augment_must_keep_the_shape():
    with pytest.raises(ValueError, match="augment must return shape"):
        pretrain_denoiser(
            fresh_model(),
            TOKENS,
            DenoiserTraining(steps=1),
            augment=lambda x, g: x[:, :4],
            log=lambda _: None,
        )


def test_lr_schedule_warms_up_then_decays_to_a_twentieth():
    t = DenoiserTraining(lr=1.0, steps=110, warmup_steps=10)
    assert [t.lr_at(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert t.lr_at(10) == 1.0 and math.isclose(t.lr_at(60), 0.525) and t.lr_at(109) > 0.05
    assert all(t.lr_at(s) >= t.lr_at(s + 1) for s in range(10, 109))
