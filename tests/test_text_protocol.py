"""The text task's evaluation protocol: train / validation / test prompt splits, evaluation prompts drawn without
replacement (paired with the ``real_heldout`` row), a validation signal that reads no evaluation signal, and a
judge that scores completions only."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from sepo_ray.tasks import get_task
from sepo_ray.tasks.text import data as D
from sepo_ray.tasks.text import judge
from sepo_ray.tasks.text.task import TextScorer, distinct_n, prompt_order, repeated_ngrams

CHEAP_REWARD = "sepo_ray.tasks.toy:fraction_a"


@pytest.fixture(scope="module")
def task():
    return get_task("text")


def _rows(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in t.tolist()}


def test_three_splits_are_disjoint_and_train_is_the_old_two_way_rule():
    reviews = D.imdb_reviews()

    def old_rule(text: str) -> str:  # the split the generator and the reward model were trained on
        h = int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")
        return "heldout" if h < 0.1 * 2.0**64 else "train"

    old = np.array([old_rule(t) for t in reviews.text])
    split = {name: D.imdb_split(name) for name in D.SPLITS}
    assert list(split["train"].index) == list(np.flatnonzero(old == "train"))  # train unchanged
    assert list(split["heldout"].index) == list(np.flatnonzero(old == "heldout"))
    val, test = set(split["validation"].index), set(split["test"].index)
    assert not val & test and val | test == set(split["heldout"].index)
    assert not set(split["validation"].text) & set(split["test"].text)  # duplicated reviews share a part
    assert not (set(split["validation"].text) | set(split["test"].text)) & set(split["train"].text)
    assert 0.04 < len(val) / len(reviews) < 0.06 and 0.04 < len(test) / len(reviews) < 0.06
    for name in ("validation", "test"):
        assert all(D.heldout_part(t) == name == D.part_of(t) for t in split[name].text[:50])
    assert D.part_of(split["train"].text.iloc[0]) == "train"
    with pytest.raises(ValueError, match="valid splits: train, heldout, validation, test"):
        D.imdb_split("dev")


def test_prompt_pools_come_from_their_own_splits(task):
    pools = {s: task._prompts(s) for s in ("train", "validation", "test")}
    for split, (ids, reviews) in pools.items():
        assert len(ids) == len(reviews) and set(reviews) <= set(D.imdb_split(split).text), split
    assert not set(pools["validation"][1]) & set(pools["test"][1])
    assert torch.equal(task.prompts("heldout"), task.prompts("test"))  # the older name of the evaluation pool
    with pytest.raises(ValueError, match="valid splits: train, validation, test"):
        task.prompts("dev")


def test_evaluation_prompts_are_distinct_test_prompts_paired_with_real_heldout(task):
    pool = task.prompts("test")  # (K, P)
    cond = task.evaluation_prompts(3, 200)  # (200, 16)
    assert torch.equal(cond, task.evaluation_prompts(3, 200))  # deterministic
    assert not torch.equal(cond, task.evaluation_prompts(4, 200))  # the seed matters
    assert torch.equal(task.evaluation_prompts(3, 50), cond[:50])  # fewer: a prefix
    order = prompt_order(3, 200, len(pool))
    assert len(set(order.tolist())) == 200 and torch.equal(
        cond, pool[order]
    )  # distinct rows of the test pool
    assert _rows(cond) <= _rows(pool) and not _rows(cond) & _rows(task.prompts("train"))
    # the reference row completes the same prompts, prompt by prompt, with the reviews they open
    real = task.reference_rows()["real_heldout"](3, 200)
    heads, tails = task.split_prompt(real, cond)
    assert heads == task.decode(cond) and all(tails)
    reviews = task._prompts("test")[1]
    assert [r[:20] for r in real[:5]] == [
        task.decode(task.vocab.encode([reviews[i]], task.length))[0][:20] for i in order[:5].tolist()
    ]
    # the validation prompts: drawn the same way from the validation split
    val = task.validation_prompts(3, 40)
    assert torch.equal(val, task.prompts("validation")[prompt_order(3, 40, len(task.prompts("validation")))])


def test_too_many_prompts_is_a_one_line_error(task):
    k, kv = len(task.prompts("test")), len(task.prompts("validation"))
    for call, size in (
        (lambda: task.evaluation_prompts(0, k + 1), k),
        (lambda: task.reference_rows()["real_heldout"](0, k + 1), k),
        (lambda: task.validation_prompts(0, kv + 1), kv),
    ):
        with pytest.raises(ValueError, match=f"holds {size}") as e:
            call()
        assert "\n" not in str(e.value)
    assert len(task.evaluation_prompts(0, k)) == k
    # a user's own pool smaller than the draw is gone through again, every prompt as often as the others
    user = task.prompts("test")[:2]
    drawn = task.evaluation_prompts(0, 5, user)
    counts = sorted(sum(torch.equal(row, u) for row in drawn) for u in user)
    assert counts == [2, 3] and torch.equal(drawn[:2], user[prompt_order(0, 2, 2)])


def test_validation_is_the_training_reward_and_never_the_judge(task, monkeypatch):
    from sepo_ray.oracles.pool import resolve_reward

    def forbidden(*args, **kwargs):
        raise AssertionError("the validation signal must not call the judge")

    monkeypatch.setattr(judge, "vader_sentiment", forbidden)
    monkeypatch.setattr(judge, "_analyzer", forbidden)
    prompts = task.validation_prompts(0, 6)  # (6, 16)
    heads = task.decode(prompts)
    tails = [" a fine film, truly a fine film.", " awful, awful and dull.", " I loved it."] * 2
    texts = [h + t for h, t in zip(heads, tails)]
    out = task.validation(texts, prompts)
    assert set(out) == {"validation_score", "validation_realism"}
    assert all(np.isfinite(v) and isinstance(v, float) for v in out.values())
    reward = resolve_reward(task.default_reward)(texts)  # the training reward, of the whole sequence
    assert out["validation_score"] == pytest.approx(float(np.mean(reward)))
    assert out["validation_realism"] == distinct_n(tails, 2)  # of the completions alone
    assert task.validation(texts) == out  # the prompts found among the held-out ones
    assert task.validation_signal and task.min_report_seeds == 3


def test_the_judge_and_the_diversity_metrics_see_only_completions(task, monkeypatch):
    seen = []
    real = judge.vader_sentiment

    def recording(texts):
        seen.append(list(texts))
        return real(texts)

    monkeypatch.setattr(judge, "vader_sentiment", recording)
    heads = ["great great great great great great ", "This film was wonderful, "]
    tails = ["dull and bad.", "dull and bad."]
    texts = [h + t for h, t in zip(heads, tails)]
    scorer = TextScorer(CHEAP_REWARD, task, generator=False)
    scores = scorer.scores(texts, prompts=heads)
    assert seen == [tails]
    assert scores["judge"].tolist() == real(tails).tolist() and scores["judge"][0] < 0
    assert scores["repeated_4grams"].tolist() == [repeated_ngrams(t) for t in tails] == [0.0, 0.0]
    summary = scorer.summarize(scores, texts)
    assert summary["distinct_1"] == distinct_n(tails, 1) and summary["distinct_2"] == distinct_n(tails, 2)
    with pytest.raises(ValueError, match="prompt text it starts with"):
        scorer.scores(texts, prompts=["nope", "nope"])

    # without the prompts: those of the evaluation, found among the test prompts
    cond = task.evaluation_prompts(0, 2)
    held = [h + " dull and bad." for h in task.decode(cond)]
    seen.clear()
    scorer.scores(held)
    assert seen == [[" dull and bad."] * 2]

    # the judge column of `sepo-ray design`
    monkeypatch.setattr(task, "scorer", lambda device="cpu", elbo_steps=None: scorer)
    seen.clear()
    columns = task.design_columns(texts, prompts=heads)
    assert seen == [tails] and columns["repeated_4grams"].tolist() == [0.0, 0.0]
