"""Designs to order (``sepo-ray design TASK``): sequences generated, constrained, de-duplicated, selected, scored
and ranked, with the evidence for each.

- :mod:`.options` — :class:`DesignOptions` (n, seed, steps, best-of-N, ranking, bounds) and the option parsers;
- :mod:`.collect` — the sampling loop: batches, rejection by constraints, exact duplicates, bounded draws and
  wall clock (:class:`DesignError`, one line, when an order cannot be met);
- :mod:`.rank` — pure pieces: best-of-N pools, de-duplication, ranking;
- :mod:`.pipeline` — the order end to end (:func:`make_designs`);
- :mod:`.report` — the files (:func:`write_designs`): Parquet, the task's own, ``summary.json`` and
  ``summary.md`` (counts, plots, top designs).

The engine names no domain: a task adds its options and constraints, its evidence columns, its own files and
plots through the ``Task`` hooks ``add_design_arguments``, ``design_constraints``, ``design_column_help``,
``design_columns``, ``write_designs`` and ``design_plots``.

    from sepo_ray.designs import DesignOptions, make_designs, write_designs
    from sepo_ray.tasks import get_task

    task = get_task("toy")
    designs = make_designs(task, "pretrained", DesignOptions(n=8, steps=8), reward=task.default_reward)
    write_designs(task, designs, Path("designs/toy"))
"""

from .collect import Collection, DesignError, apply_constraints, collect
from .options import DesignOptions, check_new_output, parse_rank_by, parse_select
from .pipeline import Designs, make_designs, order_defaults
from .rank import best_of_n, dedupe, rank
from .report import write_designs

__all__ = [
    "Collection",
    "DesignError",
    "DesignOptions",
    "Designs",
    "apply_constraints",
    "best_of_n",
    "check_new_output",
    "collect",
    "dedupe",
    "make_designs",
    "order_defaults",
    "parse_rank_by",
    "parse_select",
    "rank",
    "write_designs",
]
