"""DRAKES / MDLM Lightning checkpoints as downloaded: read without unpickling objects, model or EMA weights,
time conditioning; every route that names a generator (path, folder, task, evaluation, settings)."""

from __future__ import annotations

import json
import math
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sepo_ray.evaluation import load_generator
from sepo_ray.models import read_checkpoint, read_metadata, save_model
from sepo_ray.resolve import generator_spec, resolve_settings
from sepo_ray.tasks import get_task
from sepo_ray.tasks.dna.models import DNAConvDenoiser, from_drakes_state_dict, load_denoiser

HIDDEN, STACKS, EPS = 8, 1, 1e-3  # EPS: MDLM's log-linear schedule (noise_schedule.LogLinearNoise)


# ----------------------------------------------------------------------------- the reference, from DRAKES
def reference_forward(sd: dict, z: torch.Tensor, sigma: torch.Tensor | None) -> torch.Tensor:
    """DRAKES ``models/dnaconv.py`` CNNModel.forward(seq, t) (clean_data=False, no guidance), written out from
    its definition over a backbone state dict; sigma (B,) the backbone's time input, None: no time layers.
    Returns the m = 4 clean-token logits (B, L, 4)."""
    s = stacks_of(sd)
    base = [(1, 4), (1, 4), (4, 16), (16, 64), (64, 256)]  # (dilation, padding) of the five base convs
    convs = [layer for layer in base for _ in range(s)]  # the reference's ModuleList comprehension
    x = F.one_hot(z, num_classes=5).float().permute(0, 2, 1)  # (B, 5, L)
    feat = F.relu(F.conv1d(x, sd["linear.weight"], sd["linear.bias"], padding=4))  # (B, H, L)
    if sigma is not None:
        proj = sigma[:, None] * sd["time_embedder.0.W"][None, :] * 2 * math.pi  # GaussianFourierProjection
        fourier = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        time_emb = F.relu(F.linear(fourier, sd["time_embedder.1.weight"], sd["time_embedder.1.bias"]))
    for i, (dilation, padding) in enumerate(convs):
        h = feat.clone()  # dropout 0
        if sigma is not None:
            w, b = sd[f"time_layers.{i}.dense.weight"], sd[f"time_layers.{i}.dense.bias"]
            h = h + F.linear(time_emb, w, b)[:, :, None]
        h = F.layer_norm(h.permute(0, 2, 1), (h.shape[1],), sd[f"norms.{i}.weight"], sd[f"norms.{i}.bias"])
        h = F.relu(F.conv1d(h.permute(0, 2, 1), sd[f"convs.{i}.weight"], sd[f"convs.{i}.bias"], padding=padding,
                            dilation=dilation))  # fmt: skip
        feat = h + feat
    feat = F.relu(F.conv1d(feat, sd["final_conv.0.weight"], sd["final_conv.0.bias"]))
    feat = F.conv1d(feat, sd["final_conv.2.weight"], sd["final_conv.2.bias"]).permute(0, 2, 1)  # (B, L, 5)
    return feat[..., :4]


def stacks_of(sd: dict) -> int:
    return len({k.split(".")[1] for k in sd if k.startswith("convs.")}) // 5


def mask_sigma(z: torch.Tensor) -> torch.Tensor:
    """The noise level MDLM's log-linear forward process implies for z: -log(max(1 - #MASK / L, eps))."""
    frac = (z == 4).double().mean(-1)
    return (-torch.log(torch.clamp(1 - frac, min=EPS))).float()


def drakes_shadow(sd: dict) -> list[torch.Tensor]:
    """MDLM's EMA shadow_params for this backbone: CNNModel.parameters() in registration order (linear,
    time_embedder, convs, time_layers, norms, final_conv), requires_grad only (the Fourier W is fixed)."""
    n = 5 * stacks_of(sd)
    names = ["linear.weight", "linear.bias", "time_embedder.1.weight", "time_embedder.1.bias"]
    names += [f"convs.{i}.{p}" for i in range(n) for p in ("weight", "bias")]
    names += [f"time_layers.{i}.dense.{p}" for i in range(n) for p in ("weight", "bias")]
    names += [f"norms.{i}.{p}" for i in range(n) for p in ("weight", "bias")]
    names += [f"final_conv.{j}.{p}" for j in (0, 2) for p in ("weight", "bias")]
    assert len(names) == len(sd) - 1
    return [sd[k].clone() for k in names]


# ----------------------------------------------------------------------------- checkpoints in DRAKES' layout
class HydraLikeConfig:
    """Stands for OmegaConf's DictConfig as it pickles (``_content`` of nodes with ``_val``); not allowlisted by
    torch, so ``torch.load(weights_only=True)`` refuses any checkpoint that holds it."""

    def __init__(self, **values):
        self.values = values

    def __getstate__(self):
        return {"_metadata": None, "_parent": None, "_content": {k: Node(v) for k, v in self.values.items()}}


class Node:
    def __init__(self, value):
        self.value = value

    def __getstate__(self):
        return {"_metadata": None, "_parent": None, "_val": self.value}


class Exploit:
    """A hyper-parameter whose unpickling would create ``path`` (``open(path, "w")``)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class ShellExploit(Exploit):
    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def random_backbone(seed: int, hidden: int = HIDDEN) -> dict[str, torch.Tensor]:
    """A DRAKES-layout backbone state dict (time embedding on), PyTorch's default init drawn from ``seed``."""
    torch.manual_seed(seed)
    model = DNAConvDenoiser(hidden_dim=hidden, num_cnn_stacks=STACKS, time_embedding=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


def save_lightning(path: Path, sd: dict, ema: dict | None = None, hyper_parameters=None) -> Path:
    """``torch.save`` a dict laid out like Lightning's ``.ckpt`` of DRAKES' Diffusion module."""
    state = OrderedDict((f"backbone.{k}", v) for k, v in sd.items())
    state["noise.sigma_buffer"] = torch.zeros(())  # another module's entry: ignored
    ckpt = {
        "epoch": 4,
        "global_step": 1000,
        "pytorch-lightning_version": "2.2.1",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 4}}}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4, "params": [0, 1]}]}],
        "lr_schedulers": [{"base_lrs": [3e-4]}],
        "hparams_name": "kwargs",
        "hyper_parameters": hyper_parameters
        if hyper_parameters is not None
        else {"config": HydraLikeConfig(backbone="cnn", time_conditioning=False), "eval": False},
    }
    if ema is not None:
        ckpt["ema"] = ema
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def ema_of(sd: dict) -> dict:
    return {"decay": 0.9999, "num_updates": 1000, "shadow_params": drakes_shadow(sd)}


def batch() -> torch.Tensor:
    """Rows with 0, 1, 50, 100, 199 and 200 of 200 positions masked, the rest random bases."""
    g = torch.Generator().manual_seed(7)
    z = torch.randint(0, 4, (6, 200), generator=g)
    for row, k in enumerate((0, 1, 50, 100, 199, 200)):
        z[row, torch.randperm(200, generator=g)[:k]] = 4
    return z


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- tests
def test_ckpt_loads_by_path_folder_task_and_evaluation(tmp_path):
    sd = random_backbone(0)
    path = save_lightning(tmp_path / "drakes" / "pretrained.ckpt", sd, ema_of(random_backbone(1)))
    with pytest.raises(pickle.UnpicklingError):  # torch refuses it: the inert reader is what reads it
        torch.load(path, weights_only=True)
    ckpt = read_checkpoint(path)
    assert f"{__name__}.HydraLikeConfig" in ckpt.opaque and ckpt.hparam("time_conditioning") is False
    z, task = batch(), get_task("dna")
    expected = reference_forward(sd, z, torch.zeros(z.shape[0]))  # DRAKES: sigma = 0 (time_conditioning off)
    with torch.no_grad():
        for model in (
            load_denoiser(path),
            load_denoiser(path.parent),  # a folder holding one .ckpt and no safetensors
            task.build_denoiser(str(path)),
            load_generator(task, path),
        ):
            assert not model.training and model.config["time_conditioning"] is False
            close(model(z), expected)
    assert task.generator_file(str(path)) == path and task.generator_file(path.parent) == path
    task.check_files(str(path))


def test_ema_weights_through_settings_and_evaluate(tmp_path):
    sd, ema_sd = random_backbone(0), random_backbone(1)
    ema_sd["time_embedder.0.W"] = sd["time_embedder.0.W"]  # fixed, not in the EMA: taken from state_dict
    path = save_lightning(tmp_path / "pretrained.ckpt", sd, ema_of(ema_sd))
    task = get_task("dna")
    settings = resolve_settings(task, cli={"generator": str(path), "generator_weights": "ema"})
    spec = generator_spec(settings.values)
    assert spec == f"{path}#ema"
    task.check_files(spec)
    assert task.generator_file(spec) == path  # hashing and fingerprints see the file itself
    z = batch()
    zeros = torch.zeros(z.shape[0])
    with torch.no_grad():
        close(task.build_denoiser(spec)(z), reference_forward(ema_sd, z, zeros))
        close(load_generator(task, f"{path}#ema")(z), reference_forward(ema_sd, z, zeros))  # evaluate --model
        close(load_denoiser(f"{tmp_path}#ema")(z), reference_forward(ema_sd, z, zeros))  # folder + #ema
        assert not torch.allclose(load_denoiser(path)(z), task.build_denoiser(spec)(z))


def test_time_conditioned_checkpoint_reads_sigma_from_the_mask_fraction(tmp_path):
    sd = random_backbone(2)
    config = HydraLikeConfig(backbone="cnn", time_conditioning=True)
    path = save_lightning(tmp_path / "tc.ckpt", sd, hyper_parameters={"config": config, "eval": False})
    z = batch()
    sigma = mask_sigma(z)
    assert sigma[0] == 0 and math.isclose(
        float(sigma[-1]), -math.log(EPS), rel_tol=1e-6
    )  # clean / all masked
    with torch.no_grad():
        model = load_denoiser(path)
        assert model.config["time_conditioning"] is True
        out = model(z)
        close(out, reference_forward(sd, z, sigma))
        off = reference_forward(sd, z, torch.zeros(z.shape[0]))
        close(out[0], off[0])  # a clean row: sigma = 0, as without conditioning
        assert not torch.allclose(out[2:], off[2:], atol=1e-3)  # masked rows: the embedding moved
        close(load_denoiser(path, time_conditioning=False)(z), off)  # forced off
        # the flag travels in a saved model file's config
        saved = save_model(model, tmp_path / "generator.safetensors")
        assert json.loads(read_metadata(saved)["config"])["time_conditioning"] is True
        close(load_denoiser(saved)(z), out)
        # unreadable hyper-parameters: DRAKES' released config (off), unless forced on
        bare = save_lightning(tmp_path / "bare" / "x.ckpt", sd, hyper_parameters={})
        close(load_denoiser(bare)(z), off)
        close(load_denoiser(bare, time_conditioning=True)(z), out)
        close(from_drakes_state_dict(read_checkpoint(bare).state_dict, time_conditioning=True)(z), out)


def test_shipped_generator_and_files_without_the_flag_stay_unconditioned(tmp_path):
    model = load_denoiser("pretrained")
    assert model.config["time_conditioning"] is False and not hasattr(model, "time_embedder")
    z = batch()[:3]
    with torch.no_grad():
        close(model(z), reference_forward(dict(model.state_dict()), z, None))
    # a model file written before the flag existed (no time_conditioning in its config) loads unconditioned
    sd = random_backbone(4)
    old = from_drakes_state_dict(sd)
    config = {k: v for k, v in old.config.items() if k != "time_conditioning"}
    path = tmp_path / "old.safetensors"
    save_file(
        dict(old.state_dict()), str(path), metadata={"class": "DNAConvDenoiser", "config": json.dumps(config)}
    )
    with torch.no_grad():
        loaded = load_denoiser(path)
        assert loaded.config["time_conditioning"] is False
        close(loaded(z), reference_forward(sd, z, torch.zeros(3)))
    with pytest.raises(ValueError, match="needs time_embedding"):
        DNAConvDenoiser(hidden_dim=8, num_cnn_stacks=1, time_conditioning=True)


@pytest.mark.parametrize("exploit", [Exploit, ShellExploit])
def test_malicious_hyper_parameters_are_never_run(tmp_path, exploit):
    marker = tmp_path / "pwned"
    sd = random_backbone(0)
    hp = {"config": HydraLikeConfig(time_conditioning=False), "payload": exploit(marker)}
    path = save_lightning(tmp_path / "evil.ckpt", sd, ema_of(sd), hyper_parameters=hp)
    assert not marker.exists()  # saving ran nothing either
    ckpt = read_checkpoint(path)
    load_denoiser(f"{path}#ema")
    assert not marker.exists()
    assert {"io.open", "builtins.open", "posix.system", "os.system"} & set(ckpt.opaque)
    assert ckpt.hyper_parameters["payload"] is None and ckpt.hparam("time_conditioning") is False
    assert set(ckpt.state_dict) == {f"backbone.{k}" for k in sd} | {"noise.sigma_buffer"}


def one_line_error(call, match: str) -> str:
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


def test_bad_inputs_give_one_line_errors(tmp_path):
    sd = random_backbone(0)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    assert str(text) in one_line_error(lambda: load_denoiser(text), "not a PyTorch checkpoint")
    listed = tmp_path / "list.ckpt"
    torch.save([torch.zeros(2)], listed)
    one_line_error(lambda: read_checkpoint(listed), "not a checkpoint dict")
    no_state = tmp_path / "no_state.ckpt"
    torch.save({"epoch": 1, "hyper_parameters": {"config": HydraLikeConfig()}}, no_state)
    one_line_error(lambda: read_checkpoint(no_state), "no 'state_dict' of tensors")

    plain = save_lightning(tmp_path / "plain" / "plain.ckpt", sd)
    assert str(plain) in one_line_error(lambda: load_denoiser(f"{plain}#ema"), "has no 'ema' entry")
    short = {**ema_of(sd), "shadow_params": drakes_shadow(sd)[:-1]}
    fewer = save_lightning(tmp_path / "short.ckpt", sd, short)
    one_line_error(lambda: load_denoiser(f"{fewer}#ema"), "holds 37 shadow_params, the backbone has 38")
    shuffled = drakes_shadow(sd)
    shuffled[2], shuffled[4] = shuffled[4], shuffled[2]  # a different order of the same count
    swapped = save_lightning(tmp_path / "swapped.ckpt", sd, {**ema_of(sd), "shadow_params": shuffled})
    one_line_error(lambda: load_denoiser(f"{swapped}#ema"), "EMA shadow of time_embedder.1.weight has shape")

    saved = save_model(from_drakes_state_dict(sd), tmp_path / "model" / "generator.safetensors")
    one_line_error(lambda: load_denoiser(f"{saved}#ema"), "EMA copy of a training checkpoint")
    task = get_task("dna")
    missing = one_line_error(lambda: task.check_files(str(tmp_path / "missing.ckpt#ema")), "not found")
    assert "missing.ckpt" in missing
    (tmp_path / "two").mkdir()
    for name in ("a.ckpt", "b.ckpt"):
        save_lightning(tmp_path / "two" / name, sd)
    one_line_error(lambda: load_denoiser(tmp_path / "two"), "holds 2 .ckpt files")


def test_a_real_omegaconf_config_is_read_without_omegaconf(tmp_path):
    """When OmegaConf is installed: a checkpoint with a real DictConfig (as Hydra + Lightning write it) yields
    ``config.time_conditioning``; the reader itself never imports OmegaConf."""
    omegaconf = pytest.importorskip("omegaconf")
    sd = random_backbone(3)
    cfg = omegaconf.OmegaConf.create({"time_conditioning": True, "noise": {"type": "loglinear"}, "l": [1]})
    path = save_lightning(tmp_path / "hydra.ckpt", sd, hyper_parameters={"config": cfg, "eval": False})
    ckpt = read_checkpoint(path)
    assert ckpt.hyper_parameters["config"] == {
        "time_conditioning": True,
        "noise": {"type": "loglinear"},
        "l": [1],
    }
    z = batch()
    with torch.no_grad():
        close(load_denoiser(path)(z), reference_forward(sd, z, mask_sigma(z)))
