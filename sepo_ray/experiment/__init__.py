"""Experiments: every method of :mod:`sepo_ray.methods` against the reward-oracle calls it spends.

``sepo-ray compare TASK`` is an experiment at one budget (the paper's Table 2 and Fig. 2, with the task's
reference rows of real data); ``sepo-ray frontier TASK`` is the same at several budgets. Every row is an entry (a
method, or a fine-tuning method at one KL weight under ``--alphas``) at a budget of oracle calls per design batch
of D sequences (``--design-size``):

- ``pretrained``: the pretrained sampler (0 calls);
- ``best_of_n``: N = budget / D pretrained candidates per design, the benchmark reward keeps the best;
- ``svdd``: value-weighted importance sampling while sampling, every call counted;
- a fine-tuning method: one run per (entry, training seed) to the largest budget through the one training loop,
  checkpointed at every budget; its samples cost no further calls;
- ``finetuned_best_of_n``: the best fine-tuning entry's checkpoint at half the budget, best-of-N with the rest.

Each row is evaluated on ``--design-batches`` design batches per seed (training seeds for fine-tuned rows,
sampling seeds for the others) with the task's scorer; metrics are mean, standard deviation and standard error
over seeds. Equal tuning (``--tune-trials N``) gives every fine-tuning entry the same Ray Tune search on the
oracle-call clock (``DIR/tuning.json``). Runs live in ``DIR/runs/<entry>/seed<s>/`` (reused when finished,
resumed when not, refused when trained otherwise), rows in ``DIR/rows/`` under a fingerprint, best-of-N
candidates in ``DIR/pools/``: an interrupted experiment loses at most the row or run it was on, and a rerun
evaluates only what changed.

Outputs: ``comparison.json`` (every row: entry, method, budget, calls, cost model, config, metrics with standard
errors), ``table.md``, ``metrics.json``, ``samples.parquet``, the task's violin plot, ``frontier.png`` (several
budgets), ``reward_kl.png`` (several KL weights).

| module | concern |
|---|---|
| ``plan`` | entries, iterations per budget, checkpoint frequency, standard errors, the best row (pure) |
| ``runs`` | the fine-tuning runs (the one training loop) and their checkpoints |
| ``rows`` | row callables (samples, best-of-N pools, SVDD with counted calls) and the row cache |
| ``tuning`` | equal tuning: one Ray Tune search per entry, ``tuning.json`` |
| ``engine`` | :class:`Experiment`: the rows in order, their evaluation, tuning and training steps |
| ``pipeline`` | :func:`prepare` (every check first), :func:`run_experiment`, :func:`write_report` |
| ``report`` | ``table.md``, ``frontier.png``, ``reward_kl.png`` |
| ``merge`` | one report from an experiment run in parts (other methods or seeds): ``--merge DIR,DIR`` |
"""

from .engine import Experiment, Tuning
from .pipeline import prepare, run_experiment, write_report
from .plan import (
    Entry,
    best_row,
    budget_iterations,
    checkpoint_every,
    plan_entries,
    split_sets,
    standard_errors,
)

__all__ = [
    "Entry",
    "Experiment",
    "Tuning",
    "best_row",
    "budget_iterations",
    "checkpoint_every",
    "plan_entries",
    "prepare",
    "run_experiment",
    "split_sets",
    "standard_errors",
    "write_report",
]
