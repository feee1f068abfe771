"""A dilated 1-D CNN denoiser over one-hot tokens (incl. MASK), for any small vocabulary.

Architecture of Stark et al. 2024 ("Dirichlet flow matching", ``CNNModel``), as DRAKES (Wang et al. 2025) uses it
for its MDLM backbone (paper App. E.2: "the CNN architecture from Stark et al. (2024)"):

    h_0 = relu(Conv1d_9(onehot(z)))                              one-hot over m + 1 = 5 symbols (A, C, G, T, MASK)
    h_i = h_{i-1} + relu(Conv1d_9^{d_i}(LayerNorm(h_{i-1} + c_i)))   i = 1 .. 5S, residual
    logits = Conv1d_1(relu(Conv1d_1(h_5S)))[:, :m]                  (B, L, m)

with S = ``num_cnn_stacks`` and dilations d = (1,)*S + (1,)*S + (4,)*S + (16,)*S + (64,)*S (each of the five
base layers is repeated S times in a row, exactly as the reference builds its ``ModuleList``). With
``time_embedding=True`` c_i = Dense_i(relu(Linear(Fourier(sigma)))) is a per-layer offset from the time
embedding at the noise level sigma the backbone is given (the reference ``CNNModel.forward(seq, t)``, which MDLM
calls as ``backbone(x, sigma)``); with ``time_embedding=False`` (our default) c_i = 0 and those parameters do not
exist. The last layer has m + 1 outputs like the reference (the MASK logit is never used: MDLM's "subs"
parameterisation sets it to -inf), and :meth:`ConvDenoiser.forward` returns the m clean-token logits only.

Which sigma. MDLM's ``_process_sigma`` feeds sigma = 0 when ``time_conditioning=False`` (DRAKES' released config),
so ``time_conditioning=False`` (default) evaluates the embedding at 0, a constant. A checkpoint trained with
``time_conditioning=True`` saw the log-linear noise level sigma(t) = -log(1 - (1 - eps) t) of its input, but the
engine calls ``model(z)`` without t. The model then infers sigma from z (:func:`noise_level_from_mask`): under
MDLM's forward process each position is masked independently with probability 1 - alpha_t = 1 - exp(-sigma),
so the fraction f of masked positions in a row estimates 1 - alpha_t, and

    sigma_hat(z) = -log(max(1 - f, eps))          per row, eps = the log-linear schedule's (1e-3)

clamped as MDLM's schedule bounds it (alpha_t >= eps, i.e. sigma <= sigma(1) = -log eps; a fully masked row
gets sigma(1), a clean row sigma 0). It is the level at which z's masked fraction is typical, the input
distribution the network was trained on (SEDD's ``MaskedView`` queries its score net the same way,
``diffusion.score_entropy.sigma_from_mask``). For L = 200 the estimate's spread is small (sd of f <= 0.035).

State-dict names match the DRAKES ``pretrained.ckpt`` backbone (``linear.*``, ``time_embedder.*``,
``time_layers.{i}.dense.*``, ``convs.{i}.*``, ``norms.{i}.*``, ``final_conv.{0,2}.*``), so the DNA task loads
those weights unchanged (hidden 128, 4 stacks, time embedding on). :meth:`ConvDenoiser.reference_parameter_order`
lists the trainable ones in the reference's registration order, the order of an MDLM EMA's ``shadow_params``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepo_ray.diffusion.schedule import LogLinearSchedule

BASE_DILATIONS = (1, 1, 4, 16, 64)
#: the reference CNNModel's submodules in registration order (its ``parameters()`` order; ours registers
#: time_layers before convs, which an optimizer state of a saved run may rely on, so it is not reordered)
REFERENCE_ORDER = ("linear", "time_embedder", "convs", "time_layers", "norms", "final_conv")


def noise_level_from_mask(z: Tensor, mask_id: int, eps: float = LogLinearSchedule().eps) -> Tensor:
    """sigma_hat = -log(max(1 - f, eps)), f = #MASK / L per row: the log-linear noise level z's masked fraction
    implies (module docstring). z (B, L) long -> (B,) float64."""
    frac = (z == mask_id).to(torch.float64).mean(-1)  # (B,) estimates 1 - alpha_t
    return -torch.log((1.0 - frac).clamp(min=eps))  # (B,)


class GaussianFourierProjection(nn.Module):
    """Fixed random Fourier features of a scalar time: t (B,) -> [sin(2 pi t W), cos(2 pi t W)] (B, D)."""

    def __init__(self, embed_dim: int, scale: float = 30.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embed_dim // 2) * scale, requires_grad=False)

    def forward(self, t: Tensor) -> Tensor:
        proj = t[:, None] * self.W[None, :] * 2 * math.pi  # (B, D/2)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)  # (B, D)


class Dense(nn.Module):
    """A linear layer under the name ``dense`` (keeps the reference's state-dict keys)."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.dense = nn.Linear(input_dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(x)


class ConvDenoiser(nn.Module):
    """MDLM denoiser: z (B, L) long in 0..m (m = MASK) -> logits (B, L, m) over the clean tokens.

    Args:
        hidden_dim: channels of every convolution (DRAKES: 128).
        num_cnn_stacks: S; the network has 5 S dilated residual layers (DRAKES: 4).
        num_tokens: m, clean vocabulary size (DNA: 4); MASK = m.
        dropout: dropout on each residual branch input (DRAKES: 0).
        time_embedding: keep the reference's time-embedding parameters (for DRAKES weights).
        time_conditioning: evaluate the time embedding at the noise level inferred from z's masked fraction
            (a checkpoint trained with MDLM ``time_conditioning=True``); False: at sigma = 0 (DRAKES' config).
    """

    def __init__(
        self,
        hidden_dim: int = 128,
        num_cnn_stacks: int = 4,
        num_tokens: int = 4,
        dropout: float = 0.0,
        time_embedding: bool = False,
        time_conditioning: bool = False,
    ):
        super().__init__()
        if hidden_dim < 2 or hidden_dim % 2:
            raise ValueError(f"hidden_dim must be an even integer >= 2, got {hidden_dim}")
        if num_cnn_stacks < 1:
            raise ValueError(f"num_cnn_stacks must be >= 1, got {num_cnn_stacks}")
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
        if time_conditioning and not time_embedding:
            raise ValueError("time_conditioning=True needs time_embedding=True (the parameters it evaluates)")
        self.config = {
            "hidden_dim": int(hidden_dim),
            "num_cnn_stacks": int(num_cnn_stacks),
            "num_tokens": int(num_tokens),
            "dropout": float(dropout),
            "time_embedding": bool(time_embedding),
            "time_conditioning": bool(time_conditioning),
        }
        self.num_tokens = int(num_tokens)
        self.mask_id = self.num_tokens
        alphabet = self.num_tokens + 1
        self.linear = nn.Conv1d(alphabet, hidden_dim, kernel_size=9, padding=4)
        self.num_layers = 5 * num_cnn_stacks
        if time_embedding:
            self.time_embedder = nn.Sequential(
                GaussianFourierProjection(embed_dim=hidden_dim), nn.Linear(hidden_dim, hidden_dim)
            )
            self.time_layers = nn.ModuleList([Dense(hidden_dim, hidden_dim) for _ in range(self.num_layers)])
        dilations = [d for d in BASE_DILATIONS for _ in range(num_cnn_stacks)]
        self.convs = nn.ModuleList(
            [nn.Conv1d(hidden_dim, hidden_dim, kernel_size=9, dilation=d, padding=4 * d) for d in dilations]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(hidden_dim) for _ in range(self.num_layers)])
        self.final_conv = nn.Sequential(
            nn.Conv1d(hidden_dim, hidden_dim, kernel_size=1),
            nn.ReLU(),
            nn.Conv1d(hidden_dim, alphabet, kernel_size=1),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, z: Tensor) -> Tensor:
        """z (B, L) long in 0..m -> logits (B, L, m) over the m clean tokens."""
        if z.dim() != 2:
            raise ValueError(f"z must have shape (B, L), got {tuple(z.shape)}")
        onehot = F.one_hot(z.long(), num_classes=self.num_tokens + 1).to(
            self.linear.weight.dtype
        )  # (B, L, m+1)
        feat = F.relu(self.linear(onehot.transpose(1, 2)))  # (B, H, L)
        if self.config["time_conditioning"]:
            sigma = noise_level_from_mask(z, self.mask_id).to(feat.dtype)  # (B,) MDLM backbone(x, sigma)
            time_emb = F.relu(self.time_embedder(sigma))  # (B, H)
        elif hasattr(self, "time_embedder"):
            t0 = torch.zeros(1, device=z.device, dtype=feat.dtype)  # sigma = 0: time-unconditioned MDLM
            time_emb = F.relu(self.time_embedder(t0))  # (1, H)
        for i in range(self.num_layers):
            h = self.dropout(feat)  # (B, H, L)
            if hasattr(self, "time_layers"):
                h = h + self.time_layers[i](time_emb)[:, :, None]  # (B, H, L)
            h = self.norms[i](h.transpose(1, 2)).transpose(1, 2)  # (B, H, L)
            feat = feat + F.relu(self.convs[i](h))  # (B, H, L)
        logits = self.final_conv(feat).transpose(1, 2)  # (B, L, m+1)
        return logits[..., : self.num_tokens]  # (B, L, m)

    def reference_parameter_order(self) -> list[str]:
        """Names of the trainable parameters in the reference CNNModel's ``parameters()`` order (linear,
        time_embedder, convs, time_layers, norms, final_conv; the fixed Fourier ``W`` left out): how MDLM's
        ``ExponentialMovingAverage`` lines up its ``shadow_params`` (``p for p in parameters if p.requires_grad``)."""
        fixed = {f"{m}.W" for m, mod in self.named_modules() if isinstance(mod, GaussianFourierProjection)}
        names = [n for n, _ in self.named_parameters() if n not in fixed]  # our registration order
        rank = {group: i for i, group in enumerate(REFERENCE_ORDER)}
        return sorted(names, key=lambda n: rank[n.split(".")[0]])  # stable: index order within each group
