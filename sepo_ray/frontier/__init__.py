"""The frontier: held-out quality of the sequences a user gets against the total reward-oracle calls spent.

``python -m sepo_ray.compare TASK --frontier --output DIR`` (also ``python -m sepo_ray.frontier TASK ...``)

Every row is a method at a budget of oracle calls per design batch of D sequences (``--design-size``):

- ``pretrained``: the pretrained sampler (0 calls);
- ``best_of_n``: N = budget / D pretrained candidates per output, the fine-tuning oracle keeps the best;
- ``svdd``: value-weighted importance sampling while sampling (:mod:`sepo_ray.diffusion.guidance`), M
  candidates at S steps with D * M * S <= budget (every call counted);
- ``sepo``, ``sepo_t``, ``trajectory`` (settings ``objective=``): one fine-tuning run per (method, training
  seed) to the largest budget, checkpointed at every budget (iterations = budget / sequences per iteration);
  its samples cost no further calls;
- ``finetuned_best_of_n``: the best fine-tuning method's checkpoint at half the budget, best-of-N with the other
  half (the best: highest score among the rows at that half budget that pass the realism guard).

Each row is evaluated on ``--design-batches`` design batches per seed (10 x 64 = 640 sequences) for each seed
(training seeds for fine-tuned rows, sampling seeds for the others), with the task's held-out scorer; the
metrics are mean, standard deviation and standard error over seeds.

Equal tuning (``--tune-trials N``, 0 to skip): before the frontier runs, each fine-tuning method gets the same
Ray Tune search (:mod:`sepo_ray.sweep`) over its own ``kl_alpha`` and ``lr``: the same trials, search seed,
realism guard and ASHA clock, the fine-tuning oracle calls a trial has spent (``--tune-calls`` per trial: the
frontier's own axis, which machine load does not stretch). The chosen values go to ``DIR/tuning.json`` and into
the frontier's runs; ``--tune-only`` stops there, and a later frontier in the same DIR reuses them.
``--set METHOD.KEY=VALUE`` or ``--configs FILE.json`` ({method: {key: value}}) fix values instead (a fixed field
is not searched).

Outputs: ``DIR/frontier.json`` (rows: method, budget_calls, calls, metrics with standard errors, seeds,
config), ``DIR/frontier.md`` (the table and, per budget, the best row by the score among rows that pass the
realism guard) and ``DIR/frontier.png`` (score and realism against calls, log x, standard-error bars). The
score is ``--score-metric`` (default: the scorer's ``score_metric``, else its first metric), the realism guard
``--realism-metric`` >= ``--realism-min`` (default: the scorer's ``realism_metric``, else none).
Runs live in ``DIR/runs/<method>/seed<s>/`` (a finished run is reused, an unfinished one resumed, a run trained
otherwise refused), rows in ``DIR/rows/`` under a fingerprint (as ``compare``), best-of-N candidates in
``DIR/pools/``: an interrupted frontier loses at most the row or run it was on.

| module | concern |
|---|---|
| ``plan`` | the methods, iterations per budget, checkpoint frequency, standard errors, the best row (pure) |
| ``tuning`` | equal tuning: one Ray Tune search (``sepo_ray.sweep``) per method, ``tuning.json`` |
| ``rows`` | the fine-tuning runs and the row callables (samples, best-of-N pools, SVDD with counted calls) |
| ``report`` | ``frontier.md`` and ``frontier.png`` |
| ``cli`` | ``main``: check, tune, train, evaluate (cached), write |
"""

from .cli import Frontier, main, setup
from .plan import (
    DEFAULT_BUDGETS,
    FINETUNE,
    METHODS,
    SELECTION,
    TUNE_SPACE,
    best_row,
    budget_iterations,
    checkpoint_every,
    split_sets,
    standard_errors,
)
from .report import format_frontier, plot_frontier
from .rows import (
    CountingReward,
    best_of_n_row,
    checkpoint_generator,
    pool_chunk,
    sample_row,
    svdd_row,
    train_runs,
)
from .tuning import tune_methods, tuning_sweep

__all__ = [
    "DEFAULT_BUDGETS",
    "FINETUNE",
    "METHODS",
    "SELECTION",
    "TUNE_SPACE",
    "CountingReward",
    "Frontier",
    "best_of_n_row",
    "best_row",
    "budget_iterations",
    "checkpoint_every",
    "checkpoint_generator",
    "format_frontier",
    "main",
    "plot_frontier",
    "pool_chunk",
    "sample_row",
    "setup",
    "split_sets",
    "standard_errors",
    "svdd_row",
    "train_runs",
    "tune_methods",
    "tuning_sweep",
]
