"""``learner_forwards_per_update``: denoiser forwards per SEPO update, ours vs. the published scheme.

Our side is the engine's own code path: the rollout is :func:`sepo_ray.sepo.update.rollout` (sampler + the
old-policy quantities, as ``SEPOTorchRLModule.generate`` calls it) and each epoch's loss is
:func:`sepo_ray.sepo.update.update_loss` (as ``SEPOTorchLearner`` calls it). The published scheme
(github.com/ozekri/SEPO) is rebuilt from the core's pieces in :func:`published_update`. Every denoiser is
wrapped in a counting wrapper, and the counts are checked against :func:`count_formulas`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from sepo_ray.sepo import update
from sepo_ray.settings import SETTINGS, defaults

from .common import (
    CountingDenoiser,
    ForwardTally,
    ShapeOnlyDenoiser,
    conv_denoiser,
    default_task,
    frozen_copy,
    is_quick,
    load_avg,
    register,
    seconds,
    summary,
)
from .fidelity import fidelity_comparison


@dataclass(frozen=True)
class UpdateSettings:
    """One SEPO batch and one update: the settings schema's fields under its names and with its defaults
    (``sepo_ray.settings``), the default task's L and m, and the rows per model call."""

    length: int = field(default_factory=lambda: default_task().length)  # L
    num_tokens: int = field(default_factory=lambda: default_task().num_tokens)  # m
    prompts_per_batch: int = SETTINGS["prompts_per_batch"].default  # B
    group_size: int = SETTINGS["group_size"].default  # G
    snis_samples: int = SETTINGS["snis_samples"].default  # M (>= 1 here)
    neighbour_positions: int | None = SETTINGS["neighbour_positions"].default  # K (None = all L)
    num_epochs: int = SETTINGS["num_epochs"].default  # E
    kl_steps: int = SETTINGS["kl_steps"].default  # S
    denoise_steps: int = SETTINGS["denoise_steps"].default  # T
    clip_eps: float = SETTINGS["clip_eps"].default
    kl_alpha: float = SETTINGS["kl_alpha"].default
    chunk: int | None = None  # rows per model call in the batched forwards (None = one call)

    @property
    def batch(self) -> int:
        """N = B * G sequences per batch."""
        return self.prompts_per_batch * self.group_size

    @property
    def num_positions(self) -> int:
        """K, or L when every position is used."""
        return self.length if self.neighbour_positions is None else self.neighbour_positions

    def spec(self) -> update.UpdateSpec:
        """The core's :class:`~sepo_ray.sepo.update.UpdateSpec`: these fields, the schema's defaults for the rest."""
        return update.UpdateSpec.from_settings({**defaults(), **asdict(self)}, self.num_tokens)


def count_formulas(s: UpdateSettings) -> dict:
    """Denoiser forwards of each phase as formulas in N = B G, L, m, M, K, E, S, T, and their values.

    ours, learner (SEPOTorchLearner, per update of E epochs): conditional log-scores with grad, N K rows;
    SNIS pi_hat_theta, N K (m-1) M masked rows; path KL, N S rows of theta (grad) and N S of the reference.
    ours, rollout (SEPOTorchRLModule.generate, once per batch): sampler N rows x T calls; old log-scores N K;
    old SNIS pi_hat N K (m-1) M.
    published (per update of E epochs, G batches of B, clean score, all L positions, SNIS with the clean
    score: M masked forwards of y to draw z and M clean forwards of z per neighbour): per epoch and batch the
    old model's score B + old pi_hat 2 B L (m-1) M, the current model's score B (grad) + pi_hat 2 B L (m-1) M.
    published code as written (for the record): its neighbour set is all L (m+1) single-site changes (the
    token itself and MASK included), one forward per y to build q(z | y) and M forwards of the z.
    The formulas describe our SEPO objective with the conditional score, all m-1 tokens and no corrector.
    """
    if s.snis_samples < 1:
        raise ValueError(f"count_formulas needs snis_samples (M) >= 1, got {s.snis_samples}")
    spec = s.spec()
    if (spec.objective, spec.score_estimator, spec.neighbour_tokens, spec.corrector_steps) != (
        "sepo",
        "conditional",
        None,
        0,
    ):
        raise ValueError(
            f"count_formulas describes objective 'sepo', the conditional score, J = m-1, c = 0: {spec}"
        )
    n, b, g, length, m = s.batch, s.prompts_per_batch, s.group_size, s.length, s.num_tokens
    big_m, k, e, st, t = s.snis_samples, s.num_positions, s.num_epochs, s.kl_steps, s.denoise_steps
    kl = s.kl_alpha > 0
    return {
        "ours_learner": {
            "rows": e * (n * k + n * k * (m - 1) * big_m + (2 * n * st if kl else 0)),
            "grad_rows": e * (n * k + (n * st if kl else 0)),
            "calls": e * (2 + (2 if kl else 0)),
            "formula": "E*(N*K + N*K*(m-1)*M" + (" + 2*N*S)" if kl else ")"),
            "grad_formula": "E*(N*K" + (" + N*S)" if kl else ")"),
        },
        "ours_rollout_old_policy": {
            "rows": n * k + n * k * (m - 1) * big_m,
            "grad_rows": 0,
            "calls": 2,
            "formula": "N*K + N*K*(m-1)*M",
        },
        "ours_rollout_sampler": {"rows": n * t, "grad_rows": 0, "calls": t, "formula": "N*T"},
        "published_learner": {
            "rows": e * (2 * n + 4 * n * length * (m - 1) * big_m),
            "grad_rows": e * n,
            "calls": e * g * 6,
            "formula": "E*(2*N + 4*N*L*(m-1)*M)",
            "grad_formula": "E*N",
        },
        "published_code_as_written": {
            "rows": e * (2 * n + 2 * n * length * (m + 1) * (1 + big_m)),
            "formula": "E*(2*N + 2*N*L*(m+1)*(1+M))",
            "not_counted_per_update": {
                "rows": e * b * t,
                "formula": "E*B*T",
                "what": "a fresh batch of B sampled every epoch for the logged reward (and the KL states when "
                "put_kl=1, which adds 2 forwards per KL state); left out here, which favours the published scheme",
            },
        },
    }


def _rewards_advantages(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """GRPO advantages of a stand-in reward (fraction of token 0) for consecutive groups of G: (N, L) -> (N,)."""
    from sepo_ray.sepo import group_advantages

    rewards = (x == 0).double().mean(dim=1)  # (N,)
    return group_advantages(rewards, group_size)  # (N,)


@torch.no_grad()
def rollout_sample(model: nn.Module, s: UpdateSettings, gen: torch.Generator) -> dict:
    """The rollout of SEPOTorchRLModule.generate (:func:`sepo_ray.sepo.update.rollout`: sampler + old policy)
    with the GRPO advantages of a stand-in reward."""
    batch = update.rollout(model, s.batch, s.length, s.spec(), generator=gen, batch_size=s.chunk)
    return {**batch, "advantages": _rewards_advantages(batch["x"], s.group_size)}


@torch.no_grad()
def rollout_old_policy(model: nn.Module, batch: dict, s: UpdateSettings, gen: torch.Generator) -> dict:
    """The old-policy half of the rollout alone (:func:`sepo_ray.sepo.update.old_policy`) on the batch's x."""
    return {**batch, **update.old_policy(model, batch["x"], s.spec(), gen, s.chunk)}


def _optimiser_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    """RLlib's TorchLearner step: backward, clip the global grad norm at the schema's grad_clip, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, SETTINGS["grad_clip"].default)
    optimizer.step()


def ours_update(
    model: nn.Module,
    ref: nn.Module,
    batch: dict,
    s: UpdateSettings,
    optimizer: torch.optim.Optimizer,
    noise: torch.Generator,
) -> None:
    """One learner update (E epochs) of SEPOTorchLearner: :func:`sepo_ray.sepo.update.update_loss` per epoch."""
    spec = s.spec()
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(s.num_epochs):
        loss, _ = update.update_loss(model, ref, batch, spec, generator=noise, batch_size=s.chunk)
        _optimiser_step(optimizer, loss, params)


def published_update(
    model: nn.Module,
    old: nn.Module,
    batch: dict,
    s: UpdateSettings,
    optimizer: torch.optim.Optimizer,
    noise: torch.Generator,
) -> None:
    """The published code's update scheme (github.com/ozekri/SEPO, GRPO_MDLM_DNA), rebuilt from our functions.

    Their ``fine_tune`` loop, per update of E epochs (``mu_grpo``), one optimiser step per epoch; in each epoch,
    for each of the G sampled batches of B sequences: the old model's clean score (one forward of B) and its
    SNIS pi_hat over every Hamming-1 neighbour, both recomputed every epoch; the current model's clean score
    with gradient and its SNIS pi_hat over every neighbour (``_compute_loss_sepo`` -> ``_compute_pi_y``).
    Scores: ``log_scores(..., "clean")`` at all L positions; pi_hat: ``snis_log_pi(..., "clean")`` (M masked
    forwards of y to draw z, M clean forwards of z for 1/s(z)_y, per neighbour). The loss uses our coefficient
    function (their batch-level min of two sums is the same tensor work).
    """
    from sepo_ray import sepo

    b, g, length = s.prompts_per_batch, s.group_size, s.length
    xs = batch["x"].view(b, g, length).transpose(0, 1)  # (G, B, L): their G batches; a group is a column
    adv = batch["advantages"].view(b, g).transpose(0, 1)  # (G, B)
    positions, _ = sepo.sample_positions(b, length, None, device=xs.device)  # (B, L): every position
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(s.num_epochs):
        total = torch.zeros((), device=xs.device)
        for i in range(g):
            x = xs[i].contiguous()  # (B, L)
            with torch.no_grad():
                log_score_old = sepo.log_scores(old, x, positions, "clean", batch_size=s.chunk)  # (B, L, m)
                log_pi_old = sepo.snis_log_pi(old, x, positions, s.snis_samples, "clean", noise, s.chunk)
            log_score = sepo.log_scores(model, x, positions, "clean", batch_size=s.chunk)  # (B, L, m), grad
            log_pi = sepo.snis_log_pi(model, x, positions, s.snis_samples, "clean", noise, s.chunk)
            r = sepo.ratio(log_score.detach(), log_score_old, log_pi, log_pi_old)  # (B, L, m)
            coefficients = sepo.ppo_coefficients(r, adv[i], log_pi.exp(), s.clip_eps)  # (B, L, m)
            mask = sepo.neighbour_mask(x, positions, s.num_tokens)  # (B, L, m)
            loss, _ = sepo.sepo_loss(log_score, coefficients, mask)
            total = total + loss
        _optimiser_step(optimizer, total / g, params)


def learner_comparison(
    base: nn.Module,
    s: UpdateSettings,
    repeats: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    timed: bool = True,
) -> dict:
    """Counts (and, if `timed`, times) one batch: rollout sampler, old-policy pass, ours and published updates.

    Every denoiser (trainable, frozen KL reference, published old model) is wrapped in a `CountingDenoiser`
    sharing one tally; counts are per update (E epochs) and per batch. The sampler's count is the rollout's
    minus its old-policy pass's. Timings alternate the two schemes over `repeats` rounds (each scheme keeps its
    own weights and Adam state) and report medians.
    """
    tally = ForwardTally()
    base = base.to(device)
    ours = CountingDenoiser(copy.deepcopy(base).train(), tally)
    ref = CountingDenoiser(frozen_copy(base), tally)
    published = CountingDenoiser(copy.deepcopy(base).train(), tally)
    published_old = CountingDenoiser(frozen_copy(base), tally)
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    lr = SETTINGS["lr"].default
    opt_ours = torch.optim.Adam(ours.parameters(), lr=lr)
    opt_published = torch.optim.Adam(published.parameters(), lr=lr)

    held = {}
    tally.reset()
    rollout_s = seconds(lambda: held.update(batch=rollout_sample(ours, s, gen)), device)
    batch, rollout = held["batch"], tally.snapshot()
    tally.reset()
    rollout_old_policy(ours, batch, s, gen)
    counts = {"ours_rollout_old_policy": tally.snapshot()}
    counts["ours_rollout_sampler"] = {k: v - counts["ours_rollout_old_policy"][k] for k, v in rollout.items()}

    runs = {"ours_learner": [], "published_learner": [], "ours_rollout_old_policy": []}
    jobs = {
        "ours_learner": lambda: ours_update(ours, ref, batch, s, opt_ours, noise),
        "published_learner": lambda: published_update(
            published, published_old, batch, s, opt_published, noise
        ),
        "ours_rollout_old_policy": lambda: rollout_old_policy(ours, batch, s, gen),
    }
    order = list(jobs)
    for rep in range(repeats if timed else 1):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:  # rotate who goes first
            tally.reset()
            runs[name].append(seconds(jobs[name], device))
            counts.setdefault(name, tally.snapshot())  # the same every round
    out = {"counts": counts}
    if timed:
        med = {name: statistics.median(v) for name, v in runs.items()}
        out["seconds"] = {name: summary(v) for name, v in runs.items()}
        out["seconds"]["ours_rollout_sampler_once"] = round(rollout_s - med["ours_rollout_old_policy"], 5)
        out["learner_time_ratio"] = round(med["published_learner"] / med["ours_learner"], 3)
        out["learner_time_ratio_incl_old_policy"] = round(
            med["published_learner"] / (med["ours_learner"] + med["ours_rollout_old_policy"]), 3
        )
    return out


def _counts_block(result: dict, s: UpdateSettings) -> dict:
    """Measured counts next to their formulas, and the ratios published / ours."""
    formulas = count_formulas(s)
    counts = result["counts"]
    block = {}
    for name, measured in counts.items():
        f = formulas[name]
        block[name] = {
            **measured,
            "formula": f["formula"],
            "formula_rows": f["rows"],
            "formula_grad_rows": f["grad_rows"],
            "formula_calls": f["calls"],
            "matches_formula": all(measured[key] == f[key] for key in ("rows", "grad_rows", "calls")),
        }
    block["published_code_as_written"] = formulas["published_code_as_written"]
    ours, old, pub = counts["ours_learner"], counts["ours_rollout_old_policy"], counts["published_learner"]
    block["forwards_ratio_published_over_ours_learner"] = round(pub["rows"] / ours["rows"], 2)
    block["forwards_ratio_published_over_ours_learner_plus_old_policy"] = round(
        pub["rows"] / (ours["rows"] + old["rows"]), 2
    )
    block["forwards_ratio_published_as_written_over_ours_learner"] = round(
        formulas["published_code_as_written"]["rows"] / ours["rows"], 2
    )
    return block


@register("learner_forwards_per_update")
def learner_forwards_per_update(args: argparse.Namespace) -> dict:
    """Denoiser forwards per SEPO update, ours vs. the published scheme (counted), their time ratio, fidelity.

    Scales: "full" = the schema's defaults at the default task's L and m, counted on a stand-in network;
    "toy" = the same at L = 16, counted and timed on a ConvDenoiser (hidden 16, 1 stack) on the CPU.
    """
    quick = is_quick(args)
    load = load_avg()
    if quick:
        full = UpdateSettings(
            length=24,
            prompts_per_batch=2,
            group_size=2,
            num_epochs=2,
            snis_samples=4,
            kl_steps=2,
            denoise_steps=4,
        )
        toy = replace(full, length=8)
        repeats = 2
    else:
        full = UpdateSettings()
        toy = replace(full, length=16)
        repeats = 3
    full_result = learner_comparison(ShapeOnlyDenoiser(full.num_tokens), full, repeats=1, timed=False)
    toy_result = learner_comparison(conv_denoiser(16, 1, full.num_tokens), toy, repeats=repeats)
    out = {
        "counts_full": _counts_block(full_result, full),
        "counts_toy": _counts_block(toy_result, toy),
        "learner_time_ratio": {
            "published_over_ours": toy_result["learner_time_ratio"],
            "published_over_ours_incl_old_policy": toy_result["learner_time_ratio_incl_old_policy"],
            "scale": f"toy: L = {toy.length}, ConvDenoiser hidden 16, 1 stack, CPU",
            "seconds": toy_result["seconds"],
        },
        "settings_full": asdict(full),
        "settings_toy": asdict(toy),
    }
    if torch.cuda.is_available() and not quick:
        gpu = replace(full, chunk=4096)
        res = learner_comparison(conv_denoiser(64, 2, full.num_tokens), gpu, repeats=2, device="cuda")
        out["learner_time_ratio_full_gpu"] = {
            "published_over_ours": res["learner_time_ratio"],
            "published_over_ours_incl_old_policy": res["learner_time_ratio_incl_old_policy"],
            "scale": f"L = {gpu.length}, ConvDenoiser hidden 64, 2 stacks (the shipped generator's size), fp32",
            "seconds": res["seconds"],
            "counts_match_cpu": res["counts"] == full_result["counts"],
        }
    seeds = 2 if quick else (args.seeds if getattr(args, "seeds", None) else 20)
    out["gradient_fidelity"] = fidelity_comparison(full.snis_samples, seeds, quick)
    if "skipped" not in out["gradient_fidelity"]:
        out["learner_time_ratio"]["gradient_fidelity_ours_vs_published"] = {
            regime: out["gradient_fidelity"][regime]["verdict"]
            for regime in ("onpolicy", "offpolicy", "expected")
        }
    out["load_avg_1m_at_start"] = load
    out["quick"] = quick
    out["note"] = (
        "Counts are per update (E epochs) and per batch of N = B*G sequences, taken with a counting wrapper on "
        "every denoiser (trainable, frozen reference, published old model) and checked against the formulas. "
        "Ours: the learner recomputes per epoch only what depends on theta (conditional log-scores at K positions "
        "with grad, SNIS pi_hat_theta at the K (m-1) neighbours, the path KL on S states for theta and the "
        "reference); the old-policy quantities are computed once per batch in the rollout worker "
        "(ours_rollout_old_policy), which scales out with the workers. Published: per epoch and per sampled batch, "
        "the old model's score and pi_hat over all L (m-1) neighbours are recomputed, then the current model's; "
        "its forwards grow with L (m-1) M per sequence per epoch, ours with K (m-1) M. The ratio is "
        "4 L (m-1) M / (K (1 + (m-1) M) + 2 S) at large L (forwards_ratio_published_over_ours_learner). "
        "learner_time_ratio is measured side by side only at the toy scale on this CPU (the published update at "
        "full length is ~1M sequence-forwards of the CNN, minutes to hours on a CPU); there the per-call "
        "overhead of our small batches keeps the time ratio below the count ratio; with a network whose forward "
        "dominates (full-size generators, forward cost linear in rows), the time ratio tends to the rows ratio "
        "weighted by backward cost (grad rows cost ~3x). gradient_fidelity: cosine to the exact gradient on the "
        "enumerable toy (the fidelity entry), paired over seeds: our default (conditional score, K = 2 "
        "positions, SNIS M) vs. the published estimator (clean score, all neighbours, SNIS M); 'expected' is "
        "the bias-only cosine. Moved by: K and M (ours is linear in K M, theirs in L M), S and alpha (KL rows), "
        "E (both linear), the chunk size and batch per call (time, not counts)."
    )
    return out
