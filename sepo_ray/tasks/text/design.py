"""The text task's part of ``sepo-ray design text``: the evidence columns of a completion and ``designs.jsonl``.

The engine gives each completion its prompt, its reward (the sentiment classifier's logit, or ``--reward``) and
its rank; the task adds the evaluation signals of the completion alone (the prompt is not the model's): the judge,
the likelihood under the pretrained generator and a repetition measure (:data:`COLUMN_HELP`, computed by
``TextTask.design_columns``), and writes the completions as JSON lines.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLUMN_HELP = {
    "judge": "VADER compound sentiment of the completion alone, in [-1, 1]: the judge, never trained on",
    "pretrained_nll_per_token": "negative ELBO of the completion given its prompt under the pretrained generator, "
    "nats per token; lower = more like the text it learned",
    "repeated_4grams": "fraction of the completion's word 4-grams occurring more than once (degenerate "
    "repetition)",
}
JSONL_FIELDS = ("id", "rank", "prompt", "completion", "reward", "judge")


def write_jsonl(table, folder: Path) -> list[str]:
    """``designs.jsonl``: one object a completion, best first: id, rank, prompt, completion, reward, judge, then
    the other columns (the whole text is prompt + completion)."""
    rest = [c for c in table.columns if c not in JSONL_FIELDS and c != "sequence"]
    with open(folder / "designs.jsonl", "w", encoding="utf-8") as f:
        for _, row in table.iterrows():
            record = {k: _plain(row[k]) for k in (*JSONL_FIELDS, *rest) if k in table.columns}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return ["designs.jsonl"]


def _plain(value):
    """A JSON value: numpy scalars as Python ones, NaN as null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
