"""The one settings schema: every SEPO field (and the RLlib fields SEPO checks) declared once.

Each :class:`Setting` carries its default, type, unit and one-line help, and its allowed values (a range with
open or closed ends, a list of choices, whether None is allowed). Everything else derives from here:
``SEPOConfig`` takes its fields and defaults from :data:`SEPO_SETTINGS` and checks every value with
:func:`check` in ``validate()``; ``python -m sepo_ray.run --set KEY=VALUE`` parses with :func:`parse_value`;
sweep files check ``base_config`` and ``search_space`` with the same rules; the benchmarks read the same
defaults. So ``run``, ``sweep``, Tune and Python users get the same answer for the same value.

Cross-field rules (T >= kl_steps, G >= 2 under GRPO, B divisible by the rollout workers, ...) need the whole
config and live in ``SEPOConfig.validate()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sepo_ray.yamlio import parse_overrides, parse_value  # noqa: F401 - the --set parsers, here as before


@dataclass(frozen=True)
class Setting:
    """One config field: default, kind ("int" | "float" | "bool" | "str"), unit, help, allowed values."""

    name: str
    default: Any
    kind: str
    help: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    choices: tuple[str, ...] = ()
    #: a resumed run may change it: it decides where and how often things happen, not what is sampled or learned
    resumable: bool = False

    def describe(self) -> str:
        """``name (kind, unit, range): help [default]`` on one line (``--help`` and docs)."""
        allowed = self.allowed()
        unit = f", {self.unit}" if self.unit else ""
        return f"{self.name} ({self.kind}{unit}{', ' + allowed if allowed else ''}): {self.help} [{self.default!r}]"

    def allowed(self) -> str:
        """The allowed values in words: ``in (0, 1)``, ``>= 1``, ``one of a, b``, ``or None``."""
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = ""
        if self.nullable:
            text = f"{text} or None" if text else "None allowed"
        return text

    def why_invalid(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else the reason in a few words."""
        if value is None:
            return None if self.nullable else "may not be None"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"takes true or false, got {value!r}"
        if self.kind == "str":
            if not isinstance(value, str) or not value:
                return f"takes a non-empty string, got {value!r}"
            if self.choices and value not in self.choices:
                return f"must be one of {', '.join(self.choices)}; got {value!r}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"takes {'integers' if self.kind == 'int' else 'numbers'}, got {value!r}"
        if self.kind == "int" and not isinstance(value, int):
            return f"takes integers, got {value!r}"
        if not math.isfinite(value):
            return f"takes finite numbers, got {value!r}"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}, got {value!r}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high:g}, got {value!r}"
        return None


def _s(name, default, kind, help, unit="", **rules) -> Setting:
    return Setting(name, default, kind, help, unit, **rules)


#: SEPO's own fields (``SEPOConfig.sepo(...)``), in the order ``--help`` lists them.
SEPO_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        _s("task", "dna", "str", "the task: a registered name or 'module:TaskClass' (sepo_ray.tasks)"),
        _s(
            "generator",
            None,
            "str",
            "generator weights (file or folder); None = the task's pretrained one",
            nullable=True,
        ),
        _s(
            "generator_weights",
            "model",
            "str",
            "a training checkpoint (.ckpt) named by generator: load its model weights or its EMA copy",
            choices=("model", "ema"),
        ),
        _s(
            "reward",
            None,
            "str",
            "reward spec: a task's oracle name or 'module:function'; None = the task's default",
            nullable=True,
        ),
        _s(
            "objective",
            "sepo",
            "str",
            "'sepo' (score-ratio loss at the clean x, t ~ 0), 'sepo_t' (the same at noised states x_t of x, "
            "every noise level of the sampler) or 'trajectory' (DDPO/d1-style baseline on path log-probs)",
            choices=("sepo", "sepo_t", "trajectory"),
        ),
        _s(
            "clip_eps",
            0.2,
            "float",
            "PPO clip range epsilon of the ratio r_{x,y} (App. B)",
            low=0.0,
            high=1.0,
            low_open=True,
            high_open=True,
        ),
        _s(
            "kl_alpha",
            1.0,
            "float",
            "weight alpha of the path KL(pi_theta || pi_pretrained) (App. D.2) against the advantage, per sequence; "
            "the same scale for every objective (loss = mean_x (J_x + alpha KL_x) / C_x); 0 disables it",
            low=0.0,
        ),
        _s(
            "zero_clipped",
            True,
            "bool",
            "PPO's gradient: zero where the clipped branch is taken; False = App. B.1 literal",
        ),
        _s(
            "snis_samples",
            1,
            "int",
            "SNIS samples M per neighbour y for pi_hat(y) (Sec. 3.1); 0 = single-sample pi",
            "per neighbour",
            low=0,
        ),
        _s("denoise_steps", 32, "int", "reverse CTMC steps T of the sampler", "steps", low=1),
        _s(
            "corrector_steps",
            0,
            "int",
            "gradient-flow corrector steps after each predictor step (Sec. 3.3)",
            "per step",
            low=0,
        ),
        _s("group_size", 8, "int", "GRPO group size G: samples per prompt", "sequences", low=1),
        _s(
            "prompts_per_batch",
            4,
            "int",
            "prompts B per iteration; one iteration samples B * G sequences",
            "prompts",
            low=1,
        ),
        _s(
            "prompts_file",
            None,
            "str",
            "a task with prompts: train on these prompts (UTF-8, one per line) instead of the task's own; None = the task's",
            nullable=True,
        ),
        _s(
            "neighbour_positions",
            2,
            "int",
            "positions K subsampled per sequence for the Hamming-1 sum; None = all L",
            "per sequence",
            low=1,
            nullable=True,
        ),
        _s(
            "neighbour_tokens",
            None,
            "int",
            "tokens J proposed per position (uniform subset of the m-1 others, weight (m-1)/J); None = all m-1",
            "per position",
            low=1,
            nullable=True,
        ),
        _s(
            "score_estimator",
            "conditional",
            "str",
            "log-score estimator: 'clean' (published code) or 'conditional'",
            choices=("clean", "conditional"),
        ),
        _s(
            "advantage",
            "grpo",
            "str",
            "'grpo' (group-standardised reward), 'ppo' (reward minus a running-mean baseline) or 'critic' "
            "(reward minus a value network V(prompt) fitted by MSE, PPO actor-critic, App. B.1/E.1)",
            choices=("grpo", "ppo", "critic"),
        ),
        _s(
            "critic_hidden",
            32,
            "int",
            "advantage 'critic': width of the value network on the prompt (a scalar without prompts)",
            "units",
            low=1,
        ),
        _s(
            "critic_lr",
            1e-2,
            "float",
            "advantage 'critic': Adam learning rate of the value network",
            low=0.0,
            low_open=True,
        ),
        _s(
            "kl_steps",
            2,
            "int",
            "sampler steps per trajectory on which the path KL is evaluated (unbiased subsample)",
            "steps",
            low=1,
        ),
        _s(
            "noise_states",
            2,
            "int",
            "objective 'sepo_t': noised states x_t of each sample (sampler steps drawn uniformly) per update",
            "states",
            low=1,
        ),
        _s(
            "trajectory_steps",
            None,
            "int",
            "objective 'trajectory': sampler steps of each path re-scored per epoch, a uniform subset drawn per "
            "sequence, reweighted P/k (unbiased for the sum over the path; DDPO's timestep fraction); None = every step",
            "steps",
            low=1,
            nullable=True,
        ),
        _s(
            "max_staleness",
            0,
            "int",
            "asynchronous actor-learner: weight versions a sample may lag behind the learner's (rollout workers "
            "keep sampling while the learner updates; needs num_env_runners >= 1); 0 = the synchronous loop",
            "versions",
            low=0,
        ),
        _s(
            "oracle_actors",
            1,
            "int",
            "reward-oracle Ray actors; 0 = score in the rollout worker's process",
            "actors",
            low=0,
            resumable=True,
        ),
        _s(
            "oracle_resource",
            None,
            "str",
            "a custom Ray resource each reward-oracle actor asks 0.001 of, pinning it to the nodes that offer it "
            "(e.g. 'oracle' in cluster/*.yaml); None = any node",
            nullable=True,
            resumable=True,
        ),
        _s(
            "oracle_num_gpus",
            0.0,
            "float",
            "GPUs per reward-oracle actor (fractions allowed)",
            "GPUs per actor",
            low=0.0,
            resumable=True,
        ),
        _s(
            "oracle_max_restarts",
            3,
            "int",
            "restarts of a dead reward-oracle actor before the run fails",
            low=0,
            resumable=True,
        ),
        _s(
            "reward_timeout_s",
            600.0,
            "float",
            "seconds one batched reward call may take before the run stops with an error (with or without actors)",
            "seconds",
            low=0.0,
            low_open=True,
            resumable=True,
        ),
        _s(
            "validation_interval",
            0,
            "int",
            "iterations between validation checks (the task's validation signal); 0 = never",
            "iterations",
            low=0,
            resumable=True,
        ),
        _s(
            "validation_samples",
            64,
            "int",
            "sequences sampled per held-out evaluation",
            "sequences",
            low=1,
            resumable=True,
        ),
        _s(
            "torch_threads",
            0,
            "int",
            "torch threads in every process of a run (learner, rollout workers, tuning trial): seeded numbers depend "
            "on it (float sums); 0 = this machine's CPU count, fixed and recorded when the settings are resolved",
            "threads",
            low=0,
        ),
        _s(
            "checkpoint_frequency",
            1,
            "int",
            "iterations between checkpoints written by `python -m sepo_ray.run`",
            "iterations",
            low=1,
            resumable=True,
        ),
    )
}

#: Standard RLlib fields whose values SEPO checks (their defaults are SEPO's, set in ``SEPOConfig``).
RLLIB_SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        _s("lr", 3e-4, "float", "Adam learning rate", low=0.0, low_open=True),
        _s("num_epochs", 2, "int", "epochs K over the whole batch per iteration (App. E.2)", "epochs", low=1),
        _s("grad_clip", 1.0, "float", "global gradient-norm clip", low=0.0, low_open=True, nullable=True),
        _s(
            "num_env_runners",
            0,
            "int",
            "rollout workers; 0 = sample in the Algorithm process",
            "workers",
            low=0,
        ),
        _s("num_learners", 0, "int", "learner actors; 0 = learn in the Algorithm process", "learners", low=0),
        _s("num_gpus_per_learner", 0.0, "float", "GPUs per learner", low=0.0, resumable=True),
        _s("num_gpus_per_env_runner", 0.0, "float", "GPUs per rollout worker", low=0.0, resumable=True),
        _s(
            "seed",
            0,
            "int",
            "seed of the sampler, the learner and Tune's trial; None = drawn from the OS",
            nullable=True,
            low=0,
        ),
    )
}

SETTINGS: dict[str, Setting] = {**SEPO_SETTINGS, **RLLIB_SETTINGS}


def check(name: str, value: Any, where: str | None = None) -> None:
    """Raise ValueError ``"<where>: <name> <why>"`` if ``value`` is not allowed; unknown names pass."""
    setting = SETTINGS.get(name)
    why = setting.why_invalid(value) if setting is not None else None
    if why is not None:
        raise ValueError(f"{where or name}: {name} {why}" if where else f"{name} {why}")


def check_all(values: Mapping[str, Any], where: str = "") -> None:
    """:func:`check` every known entry of ``values``."""
    for name, value in values.items():
        check(name, value, f"{where}{name}" if where else None)


def defaults() -> dict[str, Any]:
    """Every setting's default, by name."""
    return {name: s.default for name, s in SETTINGS.items()}
