"""Denoiser and classifier networks: shapes, the DRAKES state-dict layout, safetensors round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sepo_ray.models import load_model, read_metadata, save_model
from sepo_ray.tasks.dna.classifiers import (
    DilatedCNNClassifier,
    KmerFeatures,
    KmerMLPClassifier,
    canonical_kmer_index,
)
from sepo_ray.tasks.dna.data import reverse_complement
from sepo_ray.tasks.dna.models import DNAConvDenoiser, from_drakes_state_dict, load_denoiser


def _drakes_keys(num_layers: int) -> dict[str, tuple]:
    """Backbone keys and shapes of DRAKES' pretrained.ckpt (hidden 128, 4 stacks, 5-symbol alphabet)."""
    h = 128
    keys = {
        "linear.weight": (h, 5, 9),
        "linear.bias": (h,),
        "time_embedder.0.W": (h // 2,),
        "time_embedder.1.weight": (h, h),
        "time_embedder.1.bias": (h,),
        "final_conv.0.weight": (h, h, 1),
        "final_conv.0.bias": (h,),
        "final_conv.2.weight": (5, h, 1),
        "final_conv.2.bias": (5,),
    }
    for i in range(num_layers):
        keys |= {
            f"convs.{i}.weight": (h, h, 9),
            f"convs.{i}.bias": (h,),
            f"time_layers.{i}.dense.weight": (h, h),
            f"time_layers.{i}.dense.bias": (h,),
            f"norms.{i}.weight": (h,),
            f"norms.{i}.bias": (h,),
        }
    return keys


def test_denoiser_protocol_shapes():
    model = DNAConvDenoiser(hidden_dim=16, num_cnn_stacks=1)
    assert model.num_tokens == 4 and model.mask_id == 4
    z = torch.randint(0, 5, (3, 200))
    assert model(z).shape == (3, 200, 4)
    with pytest.raises(ValueError, match="z must have shape"):
        model(z[0])
    with pytest.raises(ValueError, match="hidden_dim"):
        DNAConvDenoiser(hidden_dim=15)


def test_drakes_layout_and_dilation_order():
    model = DNAConvDenoiser(hidden_dim=128, num_cnn_stacks=4, time_embedding=True)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == _drakes_keys(20)
    # each base layer repeated S times in a row, as the reference's ModuleList comprehension builds it
    assert [c.dilation[0] for c in model.convs] == [1] * 8 + [4] * 4 + [16] * 4 + [64] * 4
    small = DNAConvDenoiser(hidden_dim=16, num_cnn_stacks=1)
    assert not any(k.startswith("time_") for k in small.state_dict())


def test_from_drakes_state_dict_roundtrip(tmp_path):
    torch.manual_seed(0)
    ref = DNAConvDenoiser(hidden_dim=16, num_cnn_stacks=2, time_embedding=True).eval()
    ckpt = {f"backbone.{k}": v for k, v in ref.state_dict().items()} | {"noise.sigma_min": torch.zeros(())}
    model = from_drakes_state_dict(ckpt)
    z = torch.randint(0, 5, (2, 200))
    torch.testing.assert_close(model(z), ref(z))
    # the time embedding at t = 0 changes the output (it is a per-layer constant, not ignored)
    plain = DNAConvDenoiser(hidden_dim=16, num_cnn_stacks=2)
    plain.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("time_")})
    assert not torch.allclose(plain(z), ref(z))
    # a bare safetensors file of DRAKES weights loads through load_denoiser
    path = tmp_path / "drakes.safetensors"
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(path))
    torch.testing.assert_close(load_denoiser(path)(z), ref(z))
    with pytest.raises(ValueError, match="not a DRAKES backbone"):
        from_drakes_state_dict({"foo": torch.zeros(1)})


def test_denoiser_sees_the_whole_sequence():
    torch.manual_seed(0)
    model = DNAConvDenoiser(hidden_dim=8, num_cnn_stacks=1)
    captured = {}

    def hook(_module, inputs):
        captured["x"] = inputs[0].detach().requires_grad_(True)
        return (captured["x"],)

    model.linear.register_forward_pre_hook(hook)
    model(torch.full((1, 200), 4))[0, 0].sum().backward()
    reach = captured["x"].grad.abs().sum(1)[0]  # (L,)
    assert (reach > 0).all()  # position 0 depends on every position, 199 included


def test_save_load_roundtrip_all_classes(tmp_path):
    torch.manual_seed(0)
    x = torch.randint(0, 4, (5, 200))
    for model in (
        DNAConvDenoiser(hidden_dim=8, num_cnn_stacks=1),
        DilatedCNNClassifier(num_classes=4, hidden_dim=8),
        KmerMLPClassifier(num_classes=4, ks=(1, 2, 3), hidden_dim=8),
    ):
        model.eval()
        path = save_model(model, tmp_path / f"{type(model).__name__}.safetensors")
        meta = read_metadata(path)
        assert meta["class"] == type(model).__name__ and json.loads(meta["config"]) == model.config
        loaded = load_model(path)
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not a denoiser"):
        load_denoiser(tmp_path / "DilatedCNNClassifier.safetensors")


def test_shipped_generator_loads():
    model = load_denoiser("pretrained")
    assert model.num_tokens == 4 and not model.training
    logits = model(torch.full((2, 200), 4))
    assert logits.shape == (2, 200, 4) and torch.isfinite(logits).all()


def test_kmer_features_are_strand_symmetric():
    assert [canonical_kmer_index(k)[1] for k in (1, 2, 3, 6)] == [2, 10, 32, 2080]
    feats = KmerFeatures((1, 2, 3, 4))
    x = torch.randint(0, 4, (4, 200))
    torch.testing.assert_close(feats(x), feats(reverse_complement(x)))
    assert feats(x).shape == (4, 2 + 10 + 32 + 136)
    # log1p(count / expected): a poly-A sequence has one active 1-mer class (A/T) with 200 / 100 = 2
    poly_a = feats(torch.zeros(1, 200, dtype=torch.long))[0]
    np.testing.assert_allclose(poly_a[:2].numpy(), [np.log1p(2.0), 0.0], rtol=1e-6)


def test_classifier_shapes():
    x = torch.randint(0, 4, (3, 200))
    assert DilatedCNNClassifier(num_classes=1, hidden_dim=8)(x).shape == (3, 1)
    assert KmerMLPClassifier(num_classes=4, ks=(1, 2), hidden_dim=8)(x).shape == (3, 4)


def test_pretraining_is_seeded(tmp_path):
    from sepo_ray.tasks.dna.data import load_dhs
    from sepo_ray.tasks.dna.pretrain import (
        ClassifierConfig,
        GeneratorConfig,
        train_classifier,
        train_generator,
    )

    data = load_dhs()
    gcfg = GeneratorConfig(
        hidden_dim=4, num_cnn_stacks=1, batch_size=4, steps=2, warmup_steps=1, eval_sequences=4, eval_draws=1
    )
    ccfg = ClassifierConfig(
        model="kmer",
        model_kwargs={"ks": [1, 2], "hidden_dim": 8},
        epochs=1,
        max_train_rows=256,
        max_eval_rows=300,
    )
    runs = []
    for i in range(2):
        out = tmp_path / str(i)
        gen, card = train_generator(data, gcfg, out, threads=1, log=lambda _: None)
        cls, ccard = train_classifier(data, "eval_oracle", ccfg, out, threads=1, log=lambda _: None)
        runs.append((gen.state_dict(), cls.state_dict()))
        assert card["data"]["sha256"] == data.sha256 and ccard["data"]["num_train"] == 256
        assert set(ccard["heldout"]) == {"validation", "test"} and (out / "eval_oracle.json").is_file()
    for a, b in zip(*runs):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
