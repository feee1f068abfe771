"""The SEDD transformer denoiser (Lou et al. 2024, "DDiT"), in the state-dict layout of the public checkpoints.

Architecture of SEDD ``model/transformer.py`` (a DiT with rotary attention, conditioned on the total noise sigma):

    x_0 = E[z]                                                       E = vocab_embed.embedding (V, H), raw Parameter
    c   = silu(mlp(sinusoid_256(sigma)))                             mlp = Linear(256, C), SiLU, Linear(C, C)
    per block (adaLN-Zero, DiT):
        (a1, b1, g1, a2, b2, g2) = adaLN_modulation(c)               Linear(C, 6H): shift, scale, gate ×2
        x = x + g1 * dropout(attn_out(attn(rope(attn_qkv(LN(x) (1 + b1) + a1)))))   non-causal, no biases
        x = x + g2 * dropout(mlp(LN(x) (1 + b2) + a2))               Linear(H, 4H), tanh-GELU, Linear(4H, H)
    out = linear(LN(x) (1 + scale) + shift)                          (shift, scale) = output_layer.adaLN_modulation(c)

LN is a bias-free LayerNorm (weight only) computed in float32. The output is a log-score log s(z)_l,v, (B, L, V)
over V = tokens + 1 symbols (MASK = V - 1, absorbing graph). With ``scale_by_sigma`` it is shifted by
-log(e^sigma - 1) - log(V - 1), the log of the absorbing graph's score at an all-uniform prediction (SEDD
Sec. 3.3: the network then only learns a correction around 0), and the entry of the current token z_l is set to
0 (the ratio p(z)/p(z) = 1). Attention uses ``torch.nn.functional.scaled_dot_product_attention`` (no
flash-attn), so the model runs on CPU and CUDA; the dtype follows the parameters, bf16 autocast is the caller's.

State-dict names and shapes equal those of ``louaaron/sedd-small`` / ``sedd-medium`` (``vocab_embed.embedding``,
``sigma_map.mlp.{0,2}``, ``rotary_emb.inv_freq``, ``blocks.{i}.{norm1,attn_qkv,attn_out,norm2,mlp.0,mlp.2,
adaLN_modulation}``, ``output_layer.{norm_final,linear,adaLN_modulation}``), so :func:`load_sedd` reads such a
folder (config.json + model.safetensors or pytorch_model.bin) unchanged, with strict key matching.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

#: weight files of a SEDD checkpoint folder, in order of preference (safetensors needs no unpickling at all)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
FREQUENCY_EMBEDDING_SIZE = 256  # width of the sinusoidal sigma features (SEDD ``TimestepEmbedder``)


def timestep_embedding(
    sigma: Tensor, dim: int = FREQUENCY_EMBEDDING_SIZE, max_period: float = 10_000.0
) -> Tensor:
    """Sinusoidal features of sigma (B,) float -> (B, dim) float32: [cos(sigma f_k), sin(sigma f_k)] with
    f_k = max_period^(-k / (dim/2)), k = 0 .. dim/2 - 1 (GLIDE / DiT); sigma itself is the argument, unscaled."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half
    )
    args = sigma.float()[:, None] * freqs[None, :]  # (B, dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (B, L, H) * (1 + scale) + shift, with shift/scale (B, 1, H)."""
    return x * (1 + scale) + shift


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the halves of the last dim (GPT-NeoX rotary convention, as SEDD/flash-attn)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class LayerNorm(nn.Module):
    """Bias-free LayerNorm: weight * normalise(x), normalised in float32, returned in x's dtype."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.float(), (self.dim,))  # (..., H) float32: variance in full precision
        return (y * self.weight.float()).to(x.dtype)


class EmbeddingLayer(nn.Module):
    """Token embedding as a raw (V, H) Parameter named ``embedding`` (SEDD's key, not nn.Embedding's)."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, z: Tensor) -> Tensor:
        return self.embedding[z]  # (B, L, H)


class TimestepEmbedder(nn.Module):
    """sigma (B,) -> mlp(sinusoid_256(sigma)) (B, C); the model applies one more SiLU on top (as SEDD does)."""

    def __init__(self, cond_dim: int, frequency_embedding_size: int = FREQUENCY_EMBEDDING_SIZE):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, sigma: Tensor) -> Tensor:
        feat = timestep_embedding(sigma, self.frequency_embedding_size)  # (B, 256) float32
        return self.mlp(feat.to(self.mlp[0].weight.dtype))  # (B, C)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) over a head dim d: inv_freq_k = base^(-2k/d), k < d/2.

    ``inv_freq`` is a persistent buffer because the public checkpoints store it."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim))

    def forward(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin), each (L, 1, d) float32, for positions 0 .. L-1 (frequencies repeated over both halves)."""
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq.float()[None, :]  # (L, d/2)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]  # (L, 1, d)
        return emb.cos(), emb.sin()


class DDiTBlock(nn.Module):
    """One adaLN-Zero transformer block: rotary self-attention and a tanh-GELU MLP, each gated by c."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, mlp_ratio: int = 4, dropout: float = 0.1):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_ratio * dim, dim)
        )
        self.dropout = nn.Dropout(dropout)
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.adaLN_modulation.weight)  # adaLN-Zero (DiT): every block starts as the identity
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, x: Tensor, cos_sin: tuple[Tensor, Tensor], c: Tensor) -> Tensor:
        """x (B, L, H), c (B, C) -> (B, L, H)."""
        B, L, H = x.shape
        mod = self.adaLN_modulation(c)[:, None, :]  # (B, 1, 6H)
        # (B, 1, H) each, in SEDD's order
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)

        h = modulate(self.norm1(x), shift_msa, scale_msa)  # (B, L, H)
        qkv = self.attn_qkv(h).view(B, L, 3, self.n_heads, H // self.n_heads)  # (B, L, 3, nh, d)
        q, k, v = qkv.unbind(dim=2)  # (B, L, nh, d) each
        cos, sin = (t.to(q.dtype) for t in cos_sin)  # (L, 1, d)
        q = (q * cos + rotate_half(q) * sin).transpose(1, 2)  # (B, nh, L, d): rotary on queries and keys only
        k = (k * cos + rotate_half(k) * sin).transpose(1, 2)  # (B, nh, L, d)
        attn = F.scaled_dot_product_attention(q, k, v.transpose(1, 2))  # (B, nh, L, d), non-causal
        attn = attn.transpose(1, 2).reshape(B, L, H)  # (B, L, H)
        x = x + gate_msa * self.dropout(self.attn_out(attn))  # (B, L, H)

        h = modulate(self.norm2(x), shift_mlp, scale_mlp)  # (B, L, H)
        return x + gate_mlp * self.dropout(self.mlp(h))  # (B, L, H)


class DDitFinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and the (H -> V) output projection; both start at zero, as in SEDD."""

    def __init__(self, hidden_size: int, out_channels: int, cond_dim: int):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size)
        self.linear = nn.Linear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * hidden_size)
        for p in (*self.linear.parameters(), *self.adaLN_modulation.parameters()):
            nn.init.zeros_(p)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """x (B, L, H), c (B, C) -> (B, L, V)."""
        shift, scale = self.adaLN_modulation(c)[:, None, :].chunk(2, dim=-1)  # (B, 1, H) each
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, L, V)


class SEDDTransformer(nn.Module):
    """SEDD score network: z (B, L) long in 0..V-1 (MASK = V - 1), sigma (B,) -> log-scores (B, L, V).

    Args:
        hidden_size: H, the residual width (sedd-small 768, sedd-medium 1024).
        n_heads: attention heads; H / n_heads must be even (rotary).
        n_blocks: transformer blocks (small 12, medium 24).
        cond_dim: C, width of the sigma conditioning (128).
        vocab_size: V, symbols including MASK (GPT-2: 50,257 + 1 = 50,258).
        max_length: longest sequence accepted (SEDD: 1024); None for no limit (rotary has none).
        dropout: residual-branch dropout in training mode (SEDD: 0.1).
        scale_by_sigma: shift by -log(e^sigma - 1) - log(V - 1) (absorbing graph; SEDD: True).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        n_heads: int = 12,
        n_blocks: int = 12,
        cond_dim: int = 128,
        vocab_size: int = 50258,
        max_length: int | None = 1024,
        dropout: float = 0.1,
        scale_by_sigma: bool = True,
    ):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("n_heads", n_heads), ("n_blocks", n_blocks),
                            ("cond_dim", cond_dim)):  # fmt: skip
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if hidden_size % n_heads or (hidden_size // n_heads) % 2:
            raise ValueError(
                f"hidden_size / n_heads must be an even integer (rotary halves), got {hidden_size} / {n_heads}"
            )
        if vocab_size < 2:
            raise ValueError(f"vocab_size must count at least one token plus MASK (>= 2), got {vocab_size}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be a positive integer or None, got {max_length}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.config = {
            "hidden_size": int(hidden_size),
            "n_heads": int(n_heads),
            "n_blocks": int(n_blocks),
            "cond_dim": int(cond_dim),
            "vocab_size": int(vocab_size),
            "max_length": None if max_length is None else int(max_length),
            "dropout": float(dropout),
            "scale_by_sigma": bool(scale_by_sigma),
        }
        self.vocab_size = int(vocab_size)
        self.mask_id = self.vocab_size - 1
        self.vocab_embed = EmbeddingLayer(hidden_size, vocab_size)
        self.sigma_map = TimestepEmbedder(cond_dim)
        self.rotary_emb = Rotary(hidden_size // n_heads)
        self.blocks = nn.ModuleList(
            [DDiTBlock(hidden_size, n_heads, cond_dim, dropout=dropout) for _ in range(n_blocks)]
        )
        self.output_layer = DDitFinalLayer(hidden_size, vocab_size, cond_dim)

    def forward(self, z: Tensor, sigma: Tensor) -> Tensor:
        """z (B, L) long, sigma (B,) float total noise (or one value for all) -> log-scores (B, L, V)."""
        if z.dim() != 2:
            raise ValueError(f"z must have shape (B, L), got {tuple(z.shape)}")
        B, L = z.shape
        max_length = self.config["max_length"]
        if max_length is not None and L > max_length:
            raise ValueError(f"sequence length {L} exceeds max_length {max_length} of this model")
        sigma = torch.as_tensor(sigma, device=z.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(B)
        if sigma.numel() != B:
            raise ValueError(
                f"sigma must have shape (B,) = ({B},) or be one value, got {sigma.numel()} values"
            )

        x = self.vocab_embed(z)  # (B, L, H)
        c = F.silu(self.sigma_map(sigma))  # (B, C)
        cos_sin = self.rotary_emb(L, z.device)  # (L, 1, d) each
        for block in self.blocks:
            x = block(x, cos_sin, c)  # (B, L, H)
        out = self.output_layer(x, c)  # (B, L, V)

        if self.config["scale_by_sigma"]:
            # log of the absorbing score at a uniform guess: -log(e^sigma - 1) - log(V - 1) (SEDD Sec. 3.3)
            shift = torch.log(torch.expm1(sigma.float())) + math.log(self.vocab_size - 1)  # (B,)
            out = out - shift.to(out.dtype)[:, None, None]  # (B, L, V)
        # the ratio of the current state to itself is 1: log-score 0 at z_l
        return torch.scatter(out, -1, z[..., None], torch.zeros_like(out[..., :1]))  # (B, L, V)


# --------------------------------------------------------------------------------------------------------------
# Public checkpoint folders (louaaron/sedd-small, sedd-medium: config.json + weights, as huggingface_hub saves)
# --------------------------------------------------------------------------------------------------------------


def _config_value(cfg: dict, dotted: str, source: str):
    """cfg["a"]["b"] for "a.b" (the nested Hydra config SEDD saves); a flat "a.b" key is accepted too."""
    if dotted in cfg:
        return cfg[dotted]
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"{source} lacks {dotted!r}: not the config of a SEDD checkpoint")
        node = node[part]
    return node


def sedd_kwargs_from_config(cfg: dict, source: str = "config.json") -> dict:
    """:class:`SEDDTransformer` arguments from a SEDD checkpoint's config (its Hydra config as a dict).

    Reads ``graph.type`` (must be 'absorb'), ``noise.type`` (must be 'loglinear'), ``tokens`` (V = tokens + 1),
    ``model.{hidden_size, n_heads, n_blocks, cond_dim, scale_by_sigma, dropout}`` and ``model.length`` if present.
    A config wrapped as ``{"config": {...}}`` (newer huggingface_hub mixins) is unwrapped."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{source} must hold a JSON object, got {type(cfg).__name__}")
    if "model" not in cfg and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]
    graph = _config_value(cfg, "graph.type", source)
    if graph != "absorb":
        raise ValueError(f"{source}: graph.type must be 'absorb' (the masking process), got {graph!r}")
    noise = _config_value(cfg, "noise.type", source)
    if noise != "loglinear":
        raise ValueError(f"{source}: noise.type must be 'loglinear' (the only schedule here), got {noise!r}")
    try:
        length = _config_value(cfg, "model.length", source)
    except ValueError:
        length = None
    try:
        dropout = _config_value(cfg, "model.dropout", source)
    except ValueError:
        dropout = 0.0
    return {
        "hidden_size": int(_config_value(cfg, "model.hidden_size", source)),
        "n_heads": int(_config_value(cfg, "model.n_heads", source)),
        "n_blocks": int(_config_value(cfg, "model.n_blocks", source)),
        "cond_dim": int(_config_value(cfg, "model.cond_dim", source)),
        "vocab_size": int(_config_value(cfg, "tokens", source)) + 1,  # + MASK (absorbing state)
        "max_length": None if length is None else int(length),
        "dropout": float(dropout),
        "scale_by_sigma": bool(_config_value(cfg, "model.scale_by_sigma", source)),
    }


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a weight file: safetensors, or a torch pickle read with ``weights_only=True`` (never unpickled
    freely); ValueError if it is neither a flat {name: tensor} dict nor readable that way."""
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses arbitrary objects: report, never fall back to pickle
        raise ValueError(
            f"{path} is not a plain tensor state dict (weights_only load refused it: {exc})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} must hold a flat {{name: tensor}} state dict, got {type(state).__name__}")
    return state


def _check_keys(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Strict match of names and shapes; the ValueError names the first missing / unexpected / mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
        raise ValueError(f"{source} does not match the SEDD layout: " + ", ".join(parts))
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{source}: {k!r} has shape {tuple(state[k].shape)}, the config implies {tuple(v.shape)}"
            )


def load_sedd(
    folder: str | Path, device: str | torch.device = "cpu", *, dropout: float | None = None
) -> SEDDTransformer:
    """Load a public SEDD checkpoint folder unchanged (config.json + model.safetensors or pytorch_model.bin),
    in eval mode on ``device``, in the dtype stored in the file. ``dropout`` overrides ``model.dropout``.

    ValueError for a missing folder, config or weights, a non-absorbing graph, or weights that do not match the
    config's layout (naming the first offending key)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"SEDD checkpoint folder not found: {str(folder)!r}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder} has no config.json: not a SEDD checkpoint folder")
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path} is not valid JSON: {exc}") from exc
    kwargs = sedd_kwargs_from_config(cfg, source=str(config_path))
    if dropout is not None:
        kwargs["dropout"] = float(dropout)
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ValueError(f"{folder} holds no weights: expected one of {list(WEIGHT_FILES)}")
    state = _read_state_dict(weights)
    # built on the meta device: no initialisation and no second copy, the file's tensors become the parameters
    with torch.device("meta"):
        model = SEDDTransformer(**kwargs)
    _check_keys(model, state, str(weights))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()
