"""SEDD transformer: the published checkpoint layout, loading a public-style folder, the sigma shift and zeroing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from sepo_ray.models import (
    SEDDTransformer,
    load_model,
    load_sedd,
    read_metadata,
    save_model,
    sedd_kwargs_from_config,
)

TINY = {"hidden_size": 32, "n_heads": 2, "n_blocks": 2, "cond_dim": 16, "vocab_size": 11}


def _published_layout(hidden: int, heads: int, blocks: int, cond: int, vocab: int) -> dict[str, tuple]:
    """State-dict keys and shapes of louaaron/sedd-{small,medium} (SEDD ``model/transformer.py``)."""
    h, c, v = hidden, cond, vocab
    keys = {
        "vocab_embed.embedding": (v, h),
        "sigma_map.mlp.0.weight": (c, 256),
        "sigma_map.mlp.0.bias": (c,),
        "sigma_map.mlp.2.weight": (c, c),
        "sigma_map.mlp.2.bias": (c,),
        "rotary_emb.inv_freq": (h // heads // 2,),
        "output_layer.norm_final.weight": (h,),
        "output_layer.linear.weight": (v, h),
        "output_layer.linear.bias": (v,),
        "output_layer.adaLN_modulation.weight": (2 * h, c),
        "output_layer.adaLN_modulation.bias": (2 * h,),
    }
    for i in range(blocks):
        keys |= {
            f"blocks.{i}.norm1.weight": (h,),
            f"blocks.{i}.attn_qkv.weight": (3 * h, h),
            f"blocks.{i}.attn_out.weight": (h, h),
            f"blocks.{i}.norm2.weight": (h,),
            f"blocks.{i}.mlp.0.weight": (4 * h, h),
            f"blocks.{i}.mlp.0.bias": (4 * h,),
            f"blocks.{i}.mlp.2.weight": (h, 4 * h),
            f"blocks.{i}.mlp.2.bias": (h,),
            f"blocks.{i}.adaLN_modulation.weight": (6 * h, c),
            f"blocks.{i}.adaLN_modulation.bias": (6 * h,),
        }
    return keys


def _hf_config(hidden: int, heads: int, blocks: int, cond: int, tokens: int) -> dict:
    """A config.json as SEDD's hub mixin writes it: the run's whole Hydra config, nested (abridged)."""
    return {
        "ngpus": 8,
        "tokens": tokens,
        "training": {"batch_size": 512, "accum": 1, "n_iters": 1300001, "ema": 0.9999},
        "data": {"train": "openwebtext", "valid": "wikitext103", "cache_dir": "data"},
        "graph": {"type": "absorb", "file": "data", "report_all": False},
        "noise": {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20},
        "sampling": {"predictor": "euler", "steps": 128, "noise_removal": True},
        "optim": {"optimizer": "AdamW", "lr": 3e-4},
        "model": {
            "name": "tiny",
            "type": "ddit",
            "hidden_size": hidden,
            "cond_dim": cond,
            "length": 64,
            "n_blocks": blocks,
            "n_heads": heads,
            "scale_by_sigma": True,
            "dropout": 0.1,
        },
    }


class _NotATensor:
    """An arbitrary object: ``torch.load(weights_only=True)`` must refuse to rebuild it."""


def _random_tiny(seed: int = 0, **overrides) -> SEDDTransformer:
    """The tiny model with every parameter random (SEDD zero-inits adaLN and the output layer)."""
    torch.manual_seed(seed)
    model = SEDDTransformer(**(TINY | {"max_length": 64, "dropout": 0.1} | overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def _write_folder(folder, model: SEDDTransformer, cfg: dict, fmt: str = "safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize(
    ("name", "hidden", "heads", "blocks", "total", "in_blocks"),
    [
        # totals: 12 blocks x (12 H^2 + 13 H + 6 H C) + 2 V H (embedding, output) + V + 2 H C + 3 H + sigma MLP
        ("sedd-small", 768, 12, 12, 169_627_218, 92_132_352),
        ("sedd-medium", 1024, 16, 24, 424_477_010, 321_183_744),
    ],
)
def test_published_layout_and_parameter_count(name, hidden, heads, blocks, total, in_blocks):
    cfg = _hf_config(hidden, heads, blocks, 128, 50257)
    with torch.device("meta"):  # no memory
        model = SEDDTransformer(**sedd_kwargs_from_config(cfg))
    assert model.vocab_size == 50258 and model.mask_id == 50257
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == _published_layout(hidden, heads, blocks, 128, 50258), name
    assert [k for k, _ in model.named_buffers()] == ["rotary_emb.inv_freq"]  # stored in the checkpoints
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == total
    h, c, v = hidden, 128, 50258
    assert (
        sum(p.numel() for p in model.blocks.parameters())
        == in_blocks
        == blocks * (12 * h * h + 13 * h + 6 * h * c)
    )
    sigma_mlp = 256 * c + c + c * c + c
    assert n_params == in_blocks + 2 * v * h + v + 2 * h * c + 3 * h + sigma_mlp


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_public_folder_loads_strictly_and_reproduces(tmp_path, fmt):
    model = _random_tiny()
    folder = _write_folder(tmp_path / fmt, model, _hf_config(32, 2, 2, 16, tokens=10), fmt)
    loaded = load_sedd(folder)
    assert isinstance(loaded, SEDDTransformer) and not loaded.training
    assert loaded.config == model.config  # V = tokens + 1, length -> max_length, dropout, scale_by_sigma
    z = torch.randint(0, 11, (3, 20))
    sigma = torch.tensor([1e-3, 0.5, 7.0])
    with torch.no_grad():
        assert torch.equal(loaded(z, sigma), model(z, sigma))
    assert load_sedd(folder, dropout=0.0).config["dropout"] == 0.0


def test_wrapped_config_and_flat_keys_are_read():
    cfg = _hf_config(32, 2, 2, 16, tokens=10)
    flat = {"graph.type": "absorb", "noise.type": "loglinear", "tokens": 10} | {
        f"model.{k}": v for k, v in cfg["model"].items()
    }
    expected = sedd_kwargs_from_config(cfg)
    assert sedd_kwargs_from_config({"config": cfg}) == expected == sedd_kwargs_from_config(flat)
    assert expected == TINY | {"max_length": 64, "dropout": 0.1, "scale_by_sigma": True}


def test_bad_folders_give_clear_errors(tmp_path):
    model = _random_tiny()
    cfg = _hf_config(32, 2, 2, 16, tokens=10)
    with pytest.raises(ValueError, match="folder not found"):
        load_sedd(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_sedd(tmp_path / "empty")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="holds no weights"):
        load_sedd(no_weights)
    for path, value, match in [
        (("graph", "type"), "uniform", "graph.type must be 'absorb'"),
        (("noise", "type"), "geometric", "noise.type must be 'loglinear'"),
    ]:
        bad = json.loads(json.dumps(cfg))
        bad[path[0]][path[1]] = value
        with pytest.raises(ValueError, match=match):
            load_sedd(_write_folder(tmp_path / value, model, bad))
    bad = json.loads(json.dumps(cfg))
    del bad["model"]["n_heads"]
    with pytest.raises(ValueError, match="lacks 'model.n_heads'"):
        load_sedd(_write_folder(tmp_path / "no_heads", model, bad))

    state = {k: v.clone() for k, v in model.state_dict().items()}
    folder = _write_folder(tmp_path / "keys", model, cfg)
    del state["blocks.1.attn_out.weight"]
    state["module.extra"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"1 missing \(first 'blocks.1.attn_out.weight'\).*unexpected \(first "
    ):
        load_sedd(folder)
    wider = _hf_config(48, 2, 2, 16, tokens=10)  # config and weights disagree on H
    with pytest.raises(
        ValueError, match="'vocab_embed.embedding' has shape \\(11, 32\\), the config implies"
    ):
        load_sedd(_write_folder(tmp_path / "wider", model, wider))

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(cfg))
    torch.save({"vocab_embed.embedding": _NotATensor()}, pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only load refused"):
        load_sedd(pickled)


def test_registry_round_trip(tmp_path):
    model = _random_tiny(seed=1)
    path = save_model(model, tmp_path / "sedd.safetensors")
    assert read_metadata(path)["class"] == "SEDDTransformer"
    loaded = load_model(path)
    assert isinstance(loaded, SEDDTransformer) and loaded.config == model.config
    z = torch.randint(0, 11, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(z, torch.tensor([0.2, 3.0])), model(z, torch.tensor([0.2, 3.0])))


def test_forward_zeroes_current_token_and_is_finite():
    model = _random_tiny()
    z = torch.randint(0, 11, (4, 16))
    z[:, :3] = model.mask_id
    sigma = torch.tensor([1e-4, 1e-2, 1.0, 20.0])
    with torch.no_grad():
        out = model(z, sigma)
    assert out.shape == (4, 16, 11) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out.gather(-1, z[..., None]) == 0).all()  # exactly 0, not approximately
    assert (out != 0).sum() == 4 * 16 * 10
    with torch.no_grad():  # one sigma for the whole batch broadcasts
        assert torch.equal(model(z, torch.tensor(0.5)), model(z, torch.full((4,), 0.5)))


def test_default_init_outputs_exactly_the_sigma_shift():
    """SEDD zero-initialises the output layer: the log-score is -log(e^sigma - 1) - log(V - 1) everywhere."""
    model = SEDDTransformer(**TINY).eval()
    z = torch.randint(0, 11, (2, 5))
    sigma = torch.tensor([0.1, 3.0])
    with torch.no_grad():
        out = model(z, sigma)
    expected = [-math.log(math.expm1(s)) - math.log(10) for s in (0.1, 3.0)]
    off = torch.ones_like(out, dtype=torch.bool).scatter(-1, z[..., None], False)
    for b in range(2):
        torch.testing.assert_close(out[b][off[b]], torch.full((5 * 10,), expected[b]), rtol=0, atol=1e-6)


def test_sigma_enters_only_through_the_shift_when_adaln_is_zero():
    model = _random_tiny(seed=2)
    with torch.no_grad():  # c = silu(sigma_map(sigma)) then feeds nothing: the network part is sigma-free
        for block in model.blocks:
            block.adaLN_modulation.weight.zero_()
        model.output_layer.adaLN_modulation.weight.zero_()
    z = torch.randint(0, 11, (3, 8))
    s1, s2 = torch.tensor([0.05, 0.5, 2.0]), torch.tensor([1.0, 4.0, 0.01])
    with torch.no_grad():
        o1, o2 = model(z, s1), model(z, s2)
    shift = (torch.log(torch.expm1(s2)) - torch.log(torch.expm1(s1)))[:, None, None]  # (B, 1, 1)
    off = torch.ones_like(o1, dtype=torch.bool).scatter(-1, z[..., None], False)
    torch.testing.assert_close((o1 - o2)[off], shift.expand_as(o1)[off], rtol=0, atol=1e-5)
    assert shift.abs().min() > 0.5  # the check is not vacuous
    plain = _random_tiny(seed=2, scale_by_sigma=False)
    with torch.no_grad():
        for block in plain.blocks:
            block.adaLN_modulation.weight.zero_()
        plain.output_layer.adaLN_modulation.weight.zero_()
        assert torch.equal(plain(z, s1), plain(z, s2))  # without scale_by_sigma nothing depends on sigma


def test_attention_is_bidirectional_and_dropout_only_in_training():
    model = _random_tiny(seed=3)
    z = torch.randint(0, 10, (1, 10))
    z2 = z.clone()
    z2[0, -1] = (z[0, -1] + 1) % 10
    sigma = torch.tensor([0.7])
    with torch.no_grad():
        first, changed = model(z, sigma)[0, 0], model(z2, sigma)[0, 0]
        assert not torch.allclose(first, changed)  # position 0 sees the last token: non-causal
        assert torch.equal(model(z, sigma), model(z, sigma))  # eval: deterministic
        model.train()
        assert not torch.equal(model(z, sigma), model(z, sigma))  # dropout 0.1 on the residual branches


def test_invalid_inputs_and_configs():
    model = _random_tiny()
    with pytest.raises(ValueError, match="z must have shape"):
        model(torch.zeros(5, dtype=torch.long), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="sigma must have shape"):
        model(torch.zeros(2, 5, dtype=torch.long), torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="exceeds max_length 64"):
        model(torch.zeros(1, 65, dtype=torch.long), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="hidden_size / n_heads"):
        SEDDTransformer(**(TINY | {"n_heads": 3}))
    with pytest.raises(ValueError, match="vocab_size"):
        SEDDTransformer(**(TINY | {"vocab_size": 1}))
    with pytest.raises(ValueError, match="dropout"):
        SEDDTransformer(**(TINY | {"dropout": 1.0}))
