"""The methods registry: every way of turning oracle calls into designs, declared once.

A method is what ``compare`` and ``frontier`` evaluate at a budget of oracle calls per design batch of D
sequences. Each declares its run settings (a fine-tuning method: what makes a run this method), the fields equal
tuning searches and its cost model — the oracle calls spent to train (once) and the calls spent per design
(:meth:`Method.cost`), so that the cost of K designs is ``train + K * per_design``.

An unknown name raises ValueError listing the valid ones (:func:`get_method`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: the fields equal tuning searches for a fine-tuning method, log-uniformly in these ranges
#: (alpha below 0.1 fooled the DNA oracle at every lr tried; one per-token scale for every objective)
FINETUNE_SPACE: dict[str, tuple[float, float]] = {"kl_alpha": (0.1, 3.0), "lr": (1e-4, 1e-3)}


@dataclass(frozen=True)
class Method:
    """One method: ``kind`` is "sampler" (the pretrained model), "selection" (spends calls per design while
    sampling), "finetune" (spends its budget once, training a generator) or "finetune+selection" (half of each)."""

    name: str
    summary: str
    kind: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    tunable: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def trains(self) -> bool:
        """Whether the method fine-tunes a generator (it has runs)."""
        return self.kind == "finetune"

    def cost(self, budget: int, design_size: int) -> dict[str, int]:
        """Oracle calls at ``budget`` calls per design batch of ``design_size``: ``train`` (spent once) and
        ``per_design`` (spent for every sequence delivered). SVDD's exact count depends on its schedule
        (:func:`sepo_ray.diffusion.guidance.svdd_plan`); this is its bound."""
        if self.kind == "sampler":
            return {"train": 0, "per_design": 0}
        if self.kind == "finetune":
            return {"train": budget, "per_design": 0}
        if self.kind == "selection":
            return {"train": 0, "per_design": budget // design_size}
        half = budget // 2
        return {"train": half, "per_design": (budget - half) // design_size}


def _finetune(name: str, summary: str, **settings) -> Method:
    return Method(name, summary, "finetune", settings, FINETUNE_SPACE)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("pretrained", "the pretrained sampler (no call)", "sampler"),
        Method(
            "best_of_n",
            "N = budget / D pretrained candidates per design, the reward keeps the best",
            "selection",
        ),
        Method(
            "svdd",
            "value-weighted importance sampling while sampling (SVDD), every call counted",
            "selection",
        ),
        _finetune("sepo", "SEPO, the score-ratio loss at the clean x (t -> 0)", objective="sepo"),
        _finetune(
            "sepo_no_snis",
            "SEPO with pi_hat from y's single parent (no SNIS)",
            objective="sepo",
            snis_samples=0,
        ),
        _finetune(
            "sepo_gradient_flow",
            "SEPO with one corrector step per predictor step (Sec. 3.3)",
            objective="sepo",
            corrector_steps=1,
        ),  # fmt: skip
        _finetune("sepo_t", "SEPO at every noise level of the sampler", objective="sepo_t"),
        _finetune(
            "actor_critic",
            "SEPO at every noise level, PPO actor-critic advantages (App. B.1 / E.1)",
            objective="sepo_t",
            advantage="critic",
        ),  # fmt: skip
        _finetune(
            "trajectory", "the DDPO / d1-style policy gradient on the sampler's path", objective="trajectory"
        ),
        Method(
            "finetuned_best_of_n",
            "the best fine-tuning method's run at half the budget, best-of-N with the other half",
            "finetune+selection",
        ),
    )
}
#: what ``compare`` (Table 2) and ``frontier`` run unless told otherwise
COMPARE_METHODS = (
    "pretrained", "best_of_n", "sepo", "sepo_no_snis", "sepo_gradient_flow", "trajectory", "sepo_t", "actor_critic",
)  # fmt: skip
FRONTIER_METHODS = ("pretrained", "best_of_n", "svdd", "sepo", "sepo_t", "trajectory", "finetuned_best_of_n")


def get_method(name: str) -> Method:
    """The method ``name``; ValueError listing the valid ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def finetuning_methods() -> list[str]:
    """The names of the methods that fine-tune a generator."""
    return [m.name for m in METHODS.values() if m.trains]
