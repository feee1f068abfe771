"""The DNA task's part of ``sepo-ray design dna``: its constraints, the evidence columns, FASTA and the motif plot.

Constraints (applied by rejection, each reported with how many draws it rejected):

- ``--gc LOW:HIGH``: the GC fraction (G + C) / L lies in [LOW, HIGH];
- ``--forbid SITE,SITE``: no site (a restriction site, say) on either strand: neither the site nor its reverse
  complement occurs anywhere (one constraint per site);
- ``--max-homopolymer N``: no run of one base longer than N.

Evidence per design (:data:`COLUMN_HELP`): every oracle of the task, the likelihood under the pretrained
generator, GC and the longest homopolymer, liver-TF motif hits and the best JASPAR matches, and novelty, the
Hamming distance to the nearest real DHS of the training split on either strand (one-hot matrix products).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .data.sequences import NUM_TOKENS, SEQ_LEN, as_tokens, reverse_complement

_COMPLEMENT = str.maketrans("ACGT", "TGCA")
TOP_MOTIFS = 3  # JASPAR matches named per design
MOTIF_P_RESOLUTION = 0.05  # bits: the grid of the exact score distribution behind a match's p-value

COLUMN_HELP = {
    "ft_oracle": "fine-tuning oracle (dna_ft): HepG2 log-odds, dilated CNN trained on chromosome half A; what the "
    "default reward pays for",
    "pred_activity": "evaluation oracle (dna_eval): HepG2 log-odds of a k-mer MLP trained on the other chromosome "
    "half; never in any training objective (Pred-Activity)",
    "atac": "P(real DHS | x) of the ATAC-Acc classifier (dna_atac), never in any training objective; > 0.5 counts "
    "as accessible",
    "guard": "P(real DHS | x) of the accessibility guard of the reward dna_ft_accessible (k-mer MLP, half A); "
    "in the objective when that reward is trained on",
    "log_lik": "ELBO log-likelihood under the pretrained generator, nats per sequence (4 seeded steps); higher = "
    "more like what the generator learned",
    "gc": "GC fraction, (G + C) / 200",
    "max_homopolymer": "the longest run of one base, bp",
    "liver_motif_hits": "liver-TF motif hits (HNF4A, HNF1A, FOXA2, CEBPB, ONECUT1; JASPAR, p < 1e-4, both strands)",
    "top_motifs": "the 3 JASPAR 2024 CORE vertebrate motifs matching best (smallest p-value of the best window, "
    "either strand), with that p-value",
    "novelty": "Hamming distance to the nearest real DHS sequence of the training split, on either strand "
    "(0 = a copy); bp of 200",
}


# ------------------------------------------------------------------------------------------- pure checks
def gc_fraction(sequences: Sequence[str]) -> np.ndarray:
    """(G + C) / length of each sequence: float64 (N,)."""
    return np.array([(s.count("G") + s.count("C")) / max(1, len(s)) for s in sequences], dtype=np.float64)


def longest_homopolymer(sequences: Sequence[str]) -> np.ndarray:
    """The longest run of one letter in each sequence (0 for an empty one): int64 (N,)."""
    return np.array(
        [max((len(m.group(0)) for m in re.finditer(r"(.)\1*", s)), default=0) for s in sequences],
        dtype=np.int64,
    )


def reverse_complement_text(site: str) -> str:
    """The reverse complement of an ACGT string."""
    return site.translate(_COMPLEMENT)[::-1]


def contains_site(sequences: Sequence[str], site: str) -> np.ndarray:
    """bool (N,): ``site`` or its reverse complement occurs in the sequence (either strand)."""
    rc = reverse_complement_text(site)
    return np.array([site in s or rc in s for s in sequences], dtype=bool)


@torch.no_grad()
def min_hamming(query: Tensor, reference: Tensor, both_strands: bool = True, chunk: int = 4096) -> np.ndarray:
    """Hamming distance from each query to its nearest reference row (also to the reference's reverse complement
    with ``both_strands``): tokens (N, L) and (M, L) in 0..3 -> int64 (N,). Matches are counted as one-hot
    products, onehot(q) (N, 4L) @ onehot(r).T (4L, M), so the cost is a few matrix products, chunked over M."""
    n, length = query.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if len(reference) == 0:
        return np.full(n, length, dtype=np.int64)
    queries = [query, reverse_complement(query)] if both_strands else [query]  # rc(q) vs r == q vs rc(r)
    q = torch.cat([F.one_hot(x.long(), NUM_TOKENS).reshape(n, -1).float() for x in queries])  # (S N, 4L)
    best = torch.zeros(len(q))  # most matching positions so far, (S N,)
    for i in range(0, len(reference), chunk):
        r = F.one_hot(reference[i : i + chunk].long(), NUM_TOKENS).reshape(-1, length * NUM_TOKENS).float()
        best = torch.maximum(best, (q @ r.T).amax(dim=1))  # (S N,)
    return (length - best.reshape(-1, n).amax(dim=0)).round().long().numpy()  # (N,)


# ------------------------------------------------------------------------------------------- constraints
def parse_gc(text: str) -> tuple[float, float]:
    """``"LOW:HIGH"`` -> (LOW, HIGH) with 0 <= LOW <= HIGH <= 1; ValueError naming ``--gc``."""
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--gc must be LOW:HIGH fractions (e.g. 0.35:0.65), got {text!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"--gc {text}: need 0 <= LOW <= HIGH <= 1")
    return low, high


def parse_sites(text: str) -> list[str]:
    """``"GAATTC,ggatcc"`` -> ["GAATTC", "GGATCC"] (upper case, repeats dropped); ValueError naming ``--forbid``."""
    sites = list(dict.fromkeys(s.strip().upper() for s in text.split(",") if s.strip()))
    bad = next((s for s in sites if not re.fullmatch(r"[ACGT]+", s)), None)
    if not sites or bad is not None:
        raise ValueError(f"--forbid takes comma-separated sites over A, C, G, T, got {text!r}")
    return sites


def add_design_arguments(parser) -> None:
    parser.add_argument(
        "--gc", default=None, metavar="LOW:HIGH", help="keep designs whose GC fraction lies in [LOW, HIGH]"
    )
    parser.add_argument(
        "--forbid",
        default=None,
        metavar="SITE,SITE",
        help="reject designs holding a site or its reverse complement",
    )
    parser.add_argument(
        "--max-homopolymer", type=int, default=None, metavar="N", help="reject runs of one base over N"
    )


def design_constraints(args) -> list:
    """(name, predicate) of ``--gc``, each ``--forbid`` site and ``--max-homopolymer``, in that order."""
    out = []
    if getattr(args, "gc", None) is not None:
        low, high = parse_gc(args.gc)

        def gc_within(seqs: list[str]) -> np.ndarray:
            gc = gc_fraction(seqs)
            return (gc >= low) & (gc <= high)

        out.append((f"gc {low:g}:{high:g}", gc_within))
    if getattr(args, "forbid", None) is not None:
        for site in parse_sites(args.forbid):
            out.append((f"forbid {site}", lambda s, site=site: ~contains_site(s, site)))
    limit = getattr(args, "max_homopolymer", None)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--max-homopolymer must be >= 1, got {limit}")
        out.append((f"max-homopolymer {limit}", lambda s: longest_homopolymer(s) <= limit))
    return out


# ------------------------------------------------------------------------------------------- evidence
@lru_cache(maxsize=1)
def training_tokens() -> Tensor:
    """Tokens (M, 200) of the DHS rows of the training split (every cell type; not validation or test)."""
    from .data import load_dhs

    data = load_dhs()
    return data.tokens[torch.from_numpy(np.flatnonzero(data.data_label == "training"))]


@lru_cache(maxsize=2)
def _oracles(device: str) -> dict:
    from .oracles import ClassifierOracle, FTOracle, artifact_path

    return {
        "ft_oracle": FTOracle(device=device),
        "guard": ClassifierOracle(artifact_path("ft_accessibility"), "probability", device),
    }


def _score_tail(pwm: np.ndarray, resolution: float) -> tuple[int, np.ndarray]:
    """(lo, tail) with tail[i] = P(score >= (lo + i) resolution) for a window of i.i.d. uniform bases, scores
    rounded to ``resolution`` column by column (the exact dynamic programme of :mod:`.motifs`)."""
    ints = np.round(pwm / resolution).astype(np.int64)  # (w, 4)
    lo = int(ints.min(1).sum())
    dist = np.zeros(int(ints.max(1).sum()) - lo + 1)
    dist[0] = 1.0
    for col in ints:
        new = np.zeros_like(dist)
        for v in col - col.min():
            new[v:] += dist[: len(dist) - v] / NUM_TOKENS
        dist = new
    return lo, np.cumsum(dist[::-1])[::-1]


@lru_cache(maxsize=1)
def jaspar_library() -> dict:
    """Every JASPAR 2024 CORE vertebrate motif (latest versions): names, one conv weight of both strands
    (2M, 4, w_max), widths, and each motif's score tail for p-values."""
    from pyjaspar import jaspardb

    from .motifs import JASPAR_RELEASE, log_odds_pwm

    motifs = jaspardb(release=JASPAR_RELEASE).fetch_motifs(collection="CORE", tax_group=["vertebrates"])
    counts = [np.array([[m.counts[a][j] for a in "ACGT"] for j in range(m.length)]) for m in motifs]
    # the PWMs on the grid of the p-values: a window's score is then exactly a value of the distribution
    pwms = [np.round(log_odds_pwm(c) / MOTIF_P_RESOLUTION) * MOTIF_P_RESOLUTION for c in counts]
    w_max = max(len(p) for p in pwms)
    weight = np.zeros((2 * len(pwms), NUM_TOKENS, w_max), dtype=np.float32)
    tails = [_score_tail(p, MOTIF_P_RESOLUTION) for p in pwms]
    table = np.zeros((len(pwms), max(len(t) for _, t in tails)))  # (M, T), zero past a motif's best score
    for m, (pwm, (_, tail)) in enumerate(zip(pwms, tails)):
        weight[2 * m, :, : len(pwm)] = pwm.T
        weight[2 * m + 1, :, : len(pwm)] = pwm[::-1, ::-1].T  # the reverse-complement strand
        table[m, : len(tail)] = tail
    return {
        "names": [m.name for m in motifs],
        "weight": torch.from_numpy(weight),
        "widths": torch.tensor([len(p) for p in pwms]),
        "lo": np.array([lo for lo, _ in tails]),
        "tail": table,
        "last": np.array([len(t) - 1 for _, t in tails]),
    }


@torch.no_grad()
def top_motifs(x: Tensor, k: int = TOP_MOTIFS, batch_size: int = 32) -> list[str]:
    """The ``k`` JASPAR motifs (distinct names) whose best window in each sequence is least likely under uniform
    bases, as ``"NAME p=…; …"``: tokens (N, L) -> N strings."""
    lib = jaspar_library()
    weight, widths = lib["weight"], lib["widths"]
    n_motifs, w_max, length = len(widths), weight.shape[-1], x.shape[1]
    valid = torch.arange(length)[None, :] <= (length - widths)[:, None]  # (M, L) windows inside the sequence
    best = []
    for i in range(0, len(x), batch_size):
        onehot = F.one_hot(x[i : i + batch_size].long(), NUM_TOKENS).float().transpose(1, 2)  # (B, 4, L)
        scores = F.conv1d(F.pad(onehot, (0, w_max - 1)), weight)  # (B, 2M, L)
        scores = scores.view(len(onehot), n_motifs, 2, length).amax(2).masked_fill(~valid, -1e9)  # (B, M, L)
        best.append(scores.amax(-1))  # (B, M)
    best = torch.cat(best).double().numpy() if best else np.zeros((0, n_motifs))  # (N, M)
    index = np.rint(best / MOTIF_P_RESOLUTION).astype(np.int64) - lib["lo"][None, :]  # (N, M)
    index = np.clip(index, 0, lib["last"][None, :])
    pvalue = lib["tail"][np.arange(n_motifs)[None, :], index]  # (N, M)
    out = []
    for row in pvalue:
        names: dict[str, float] = {}
        for m in np.argsort(row, kind="stable")[: 4 * k]:
            names.setdefault(lib["names"][m], row[m])
        out.append("; ".join(f"{name} p={p:.1e}" for name, p in list(names.items())[:k]))
    return out


def design_columns(sequences: Sequence[str], seed: int = 0, device="cpu") -> dict[str, np.ndarray]:
    """The evidence columns (:data:`COLUMN_HELP`, then hits per liver TF ``hits_<TF>``) of 200 bp designs."""
    from .metrics import default_scorer

    x = as_tokens(list(sequences), SEQ_LEN)  # (N, L)
    scorer = default_scorer(str(device))
    scores = scorer.scores(x, seed)
    oracles = _oracles(str(device))
    per_tf = scorer.motifs.hits(x)  # (N, M)
    columns = {
        "ft_oracle": oracles["ft_oracle"](x),
        "pred_activity": scores["pred_activity"],
        "atac": scores["atac"],
        "guard": oracles["guard"](x),
        "log_lik": scores["log_lik"],
        "gc": gc_fraction(sequences),
        "max_homopolymer": longest_homopolymer(sequences),
        "liver_motif_hits": scores["motif_count"],
        "top_motifs": np.array(top_motifs(x), dtype=object),
        "novelty": min_hamming(x, training_tokens()),
    }
    columns.update({f"hits_{name}": per_tf[:, m] for m, name in enumerate(scorer.motifs.names)})
    return columns


def column_help() -> dict[str, str]:
    from .motifs import LIVER_MOTIFS

    return {
        **COLUMN_HELP,
        **{f"hits_{n}": f"{n} motif hits ({m}, p < 1e-4, both strands)" for n, m in LIVER_MOTIFS.items()},
    }


# ------------------------------------------------------------------------------------------- files, plots
def write_fasta(table, folder: Path) -> list[str]:
    """``designs.fasta``: one record a design, best first; the header holds its id, rank and key scores."""
    keys = [c for c in ("reward", "pred_activity", "atac", "log_lik", "gc", "novelty") if c in table]
    lines = []
    for _, row in table.iterrows():
        facts = " ".join(f"{k}={row[k]:.3g}" for k in keys)
        lines += [f">{row['id']} rank={row['rank']} {facts}", row["sequence"]]
    (folder / "designs.fasta").write_text("\n".join(lines) + "\n")
    return ["designs.fasta"]


def motif_plot(rows: Mapping[str, Sequence[str]], folder: Path) -> list[tuple[str, str]]:
    """``motif_enrichment.png``: mean hits per sequence of each liver TF, one bar per row (designs, pretrained,
    real DHS)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import default_scorer

    scanner = default_scorer().motifs
    rows = {name: seqs for name, seqs in rows.items() if len(seqs)}
    means = {name: scanner.hits(as_tokens(list(seqs), SEQ_LEN)).mean(0) for name, seqs in rows.items()}
    width = 0.8 / max(1, len(means))
    fig, ax = plt.subplots(figsize=(1.3 * len(scanner.names) + 2, 4.2))
    for i, (name, mean) in enumerate(means.items()):
        ax.bar(np.arange(len(scanner.names)) + (i - (len(means) - 1) / 2) * width, mean, width, label=name)
    ax.set_xticks(range(len(scanner.names)), scanner.names)
    ax.set_ylabel("motif hits per sequence")
    ax.set_title("Liver-TF motifs (JASPAR, p < 1e-4, both strands)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "motif_enrichment.png", dpi=120)
    plt.close(fig)
    return [
        (
            "liver-TF motif hits per sequence: designs against the pretrained generator and real DHS",
            "motif_enrichment.png",
        )
    ]
