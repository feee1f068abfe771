"""The judge of the text task: VADER sentiment and pairwise win rates (paper Sec. 4.1, App. E.1).

The paper judges completions pairwise with GPT-3.5 on held-out prompts. Offline, the judge is VADER (Hutto &
Gilbert 2014; ``vaderSentiment==3.3.2``, MIT): a fixed lexicon and rules, of another family than the GPT-2
reward model and never trained on anything here, so fine-tuning against the reward cannot have fitted it. It is
an evaluation signal: the evaluation table (:class:`~.task.TextScorer`) and ``sepo-ray design`` score the
completion alone (of a test prompt) with it; no selection (tuning, the validation signal) ever reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

VADER_INSTALL_HINT = "pip install vaderSentiment==3.3.2"


@lru_cache(maxsize=1)
def _analyzer():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:
        raise ImportError(f"the text judge needs VADER: install it with `{VADER_INSTALL_HINT}`") from e
    return SentimentIntensityAnalyzer()


def vader_sentiment(texts: Sequence[str]) -> np.ndarray:
    """float64 (B,): VADER's compound score of each text, in [-1, 1] (> 0 positive, 0 neutral or empty)."""
    if isinstance(texts, str):
        raise TypeError("vader_sentiment takes a list of texts, not one string")
    analyzer = _analyzer()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


def win_rate(scores_a, scores_b) -> tuple[float, float]:
    """Paired win rate of A over B and its standard error.

    ``scores_a[i]`` and ``scores_b[i]`` judge two completions of the same prompt i (any matching shape). Each pair
    scores w_i = 1 if a_i > b_i, 1/2 if a_i == b_i (a tie counts as half a win for each side, so the rate of A
    over B and of B over A sum to 1, and two identical models score exactly 1/2), 0 otherwise. Returns
    ``(mean(w), std(w, ddof=1) / sqrt(n))``: pairs are treated as independent; the error is NaN for one pair.
    """
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"win_rate compares paired scores: shapes {a.shape} and {b.shape} differ")
    if a.size == 0:
        raise ValueError("win_rate needs at least one pair of scores")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("win_rate: scores must be finite")
    w = ((a > b) + 0.5 * (a == b)).ravel()  # (n,)
    stderr = float(w.std(ddof=1) / np.sqrt(w.size)) if w.size > 1 else float("nan")
    return float(w.mean()), stderr
