"""Sequence classifiers behind the DNA oracles: tokens (B, L) in 0..3 -> class logits (B, C).

Two deliberately different model families, so that a sequence that fools the fine-tuning oracle does not
automatically fool the evaluation oracle (DRAKES trains its two oracles on disjoint chromosome halves; ours also
differ in architecture):

- :class:`DilatedCNNClassifier` — convolutional motif detectors, max-pooling, dilated residual convolutions,
  global max+mean pooling (fine-tuning oracle, accessibility classifier). Position-aware, local grammar.
- :class:`KmerMLPClassifier` — a bag of reverse-complement-collapsed k-mer counts (k = 1..6) fed to an MLP
  (evaluation oracle): no positions, no convolutions, only k-mer spectra as in gkm-SVM-style DHS models.

Both can be made strand-symmetric: ``forward(x)`` is the plain model; :func:`strand_averaged_logits` averages
the logits of x and its reverse complement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepo_ray.models import register_model

from .data.sequences import NUM_TOKENS, reverse_complement


@register_model
class DilatedCNNClassifier(nn.Module):
    """Dilated residual CNN classifier: tokens (B, L) -> logits (B, num_classes).

    stem   h = maxpool_p(relu(BN(Conv1d_k0(onehot(x)))))                    (B, H, L / p)
    blocks h = h + dropout(gelu(BN(Conv1d_k^{d}(h)))),  d in dilations     (B, H, L / p)
    head   logits = W2 dropout(relu(W1 [max_L h ; mean_L h]))               (B, C)
    """

    def __init__(
        self,
        num_classes: int = 4,
        hidden_dim: int = 128,
        stem_kernel: int = 15,
        pool: int = 4,
        kernel_size: int = 5,
        dilations: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.2,
    ):
        super().__init__()
        if num_classes < 1 or hidden_dim < 1 or pool < 1 or stem_kernel % 2 == 0 or kernel_size % 2 == 0:
            raise ValueError(
                "need num_classes >= 1, hidden_dim >= 1, pool >= 1 and odd stem_kernel / kernel_size, got "
                f"{num_classes=}, {hidden_dim=}, {pool=}, {stem_kernel=}, {kernel_size=}"
            )
        self.config = {
            "num_classes": int(num_classes),
            "hidden_dim": int(hidden_dim),
            "stem_kernel": int(stem_kernel),
            "pool": int(pool),
            "kernel_size": int(kernel_size),
            "dilations": [int(d) for d in dilations],
            "dropout": float(dropout),
        }
        self.stem = nn.Conv1d(NUM_TOKENS, hidden_dim, stem_kernel, padding=stem_kernel // 2)
        self.stem_norm = nn.BatchNorm1d(hidden_dim)
        self.pool = nn.MaxPool1d(pool, ceil_mode=True)
        self.convs = nn.ModuleList(
            [
                nn.Conv1d(hidden_dim, hidden_dim, kernel_size, dilation=d, padding=d * (kernel_size // 2))
                for d in dilations
            ]
        )
        self.norms = nn.ModuleList([nn.BatchNorm1d(hidden_dim) for _ in dilations])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L) long in 0..3 -> logits (B, C)."""
        onehot = F.one_hot(x.long(), NUM_TOKENS).to(self.stem.weight.dtype).transpose(1, 2)  # (B, 4, L)
        h = self.pool(F.relu(self.stem_norm(self.stem(onehot))))  # (B, H, L/p)
        for conv, norm in zip(self.convs, self.norms):
            h = h + self.dropout(F.gelu(norm(conv(h))))  # (B, H, L/p)
        pooled = torch.cat([h.amax(-1), h.mean(-1)], dim=-1)  # (B, 2H)
        return self.head(pooled)  # (B, C)


def canonical_kmer_index(k: int) -> tuple[np.ndarray, int]:
    """Map each of the 4**k k-mers (base-4 index, A=0) to the id of its reverse-complement class.

    Returns (lut int64 (4**k,), number of classes). A k-mer and its reverse complement share an id.
    """
    n = NUM_TOKENS**k
    idx = np.arange(n)
    digits = np.stack([(idx // NUM_TOKENS ** (k - 1 - j)) % NUM_TOKENS for j in range(k)], axis=1)  # (n, k)
    rc_digits = (NUM_TOKENS - 1 - digits)[:, ::-1]  # (n, k)
    rc = (rc_digits * NUM_TOKENS ** np.arange(k - 1, -1, -1)).sum(1)  # (n,)
    rep = np.minimum(idx, rc)
    _, lut = np.unique(rep, return_inverse=True)
    return lut.astype(np.int64), int(lut.max()) + 1


class KmerFeatures(nn.Module):
    """Reverse-complement-collapsed k-mer spectrum: tokens (B, L) -> features (B, F), F = sum_k #classes(k).

    Feature = count of the k-mer class in the sequence divided by the expected count under a uniform
    i.i.d. sequence, (L - k + 1) * (#k-mers in the class) / 4**k, then log1p: comparable scales across k.
    """

    def __init__(self, ks: Sequence[int] = (1, 2, 3, 4, 5, 6)):
        super().__init__()
        self.ks = [int(k) for k in ks]
        sizes = []
        for k in self.ks:
            lut, size = canonical_kmer_index(k)
            self.register_buffer(f"lut{k}", torch.from_numpy(lut), persistent=False)
            class_size = np.bincount(lut, minlength=size).astype(np.float32)
            self.register_buffer(f"class_size{k}", torch.from_numpy(class_size), persistent=False)
            sizes.append(size)
        self.num_features = int(sum(sizes))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L) long in 0..3 -> float features (B, F)."""
        b, length = x.shape
        out = []
        for k in self.ks:
            windows = x.long().unfold(1, k, 1)  # (B, L-k+1, k)
            weights = NUM_TOKENS ** torch.arange(k - 1, -1, -1, device=x.device)  # (k,)
            kmer = getattr(self, f"lut{k}")[(windows * weights).sum(-1)]  # (B, L-k+1)
            class_size = getattr(self, f"class_size{k}")
            counts = torch.zeros(b, class_size.numel(), device=x.device)  # (B, F_k)
            counts.scatter_add_(1, kmer, torch.ones_like(kmer, dtype=counts.dtype))
            expected = (length - k + 1) * class_size / NUM_TOKENS**k  # (F_k,)
            out.append(torch.log1p(counts / expected))
        return torch.cat(out, dim=-1)  # (B, F)


@register_model
class KmerMLPClassifier(nn.Module):
    """k-mer-spectrum MLP: logits = MLP(KmerFeatures(x)); tokens (B, L) -> logits (B, num_classes)."""

    def __init__(
        self,
        num_classes: int = 4,
        ks: Sequence[int] = (1, 2, 3, 4, 5, 6),
        hidden_dim: int = 256,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.config = {
            "num_classes": int(num_classes),
            "ks": [int(k) for k in ks],
            "hidden_dim": int(hidden_dim),
            "dropout": float(dropout),
        }
        self.features = KmerFeatures(ks)
        self.norm = nn.LayerNorm(self.features.num_features)
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.features.num_features, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L) long in 0..3 -> logits (B, C)."""
        return self.mlp(self.norm(self.features(x)))  # (B, C)


def strand_averaged_logits(model: nn.Module, x: Tensor) -> Tensor:
    """(model(x) + model(revcomp(x))) / 2: a strand-symmetric classifier. x (B, L) -> (B, C)."""
    return 0.5 * (model(x) + model(reverse_complement(x)))  # (B, C)
