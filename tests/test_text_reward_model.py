"""The text task's reward model: tiny training runs (folder, card, determinism) and the shipped artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from sepo_ray.tasks.text import data  # noqa: E402
from sepo_ray.tasks.text.reward_model import (  # noqa: E402
    ARTIFACTS_DIR,
    REBUILD_HINT,
    REWARD_DIR,
    RewardModelConfig,
    SentimentReward,
    main,
    predict_logits,
    train_reward_model,
)

TINY = RewardModelConfig(
    n_embd=16,
    n_layer=1,
    n_head=2,
    n_positions=32,
    batch_size=16,
    epochs=1,
    warmup_steps=2,
    max_train_reviews=64,
    max_heldout_reviews=32,
    short_eval_tokens=8,
    log_every=2,
)

POSITIVE = [
    "This movie was wonderful, I loved every minute of it.",
    "A brilliant film with superb acting and a beautiful story.",
    "One of the best movies I have ever seen. Highly recommended!",
    "An excellent, moving and funny film. A true masterpiece.",
    "I really enjoyed this film; the cast is great and the ending is perfect.",
    "Fantastic performances and a touching, delightful script.",
    "A gem of a movie: smart, warm and beautifully shot.",
    "Absolutely amazing. I would watch it again and again.",
    "The best film of the year, a joy from start to finish.",
    "Great direction, great music, great acting. I loved it.",
]
NEGATIVE = [
    "This movie was terrible, a complete waste of time.",
    "Awful acting, a boring plot and a stupid ending.",
    "One of the worst films I have ever seen. Avoid it!",
    "A dull, pointless and badly written mess.",
    "I hated this film; the cast is terrible and the script is awful.",
    "Horrible performances and a lame, predictable story.",
    "Boring, ugly and poorly made. What a disaster.",
    "Absolutely dreadful. I wanted my money back.",
    "The worst movie of the year, painful from start to finish.",
    "Bad direction, bad music, bad acting. I hated it.",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "reward"
    card = train_reward_model(TINY, out, log=lambda _: None)
    return out, card


def test_tiny_run_writes_a_loadable_folder_and_its_card(tiny_run):
    from transformers import AutoModelForSequenceClassification

    out, card = tiny_run
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "config.json", "model.safetensors"]
    assert not list(out.parent.glob(".reward.*"))  # no temporary folder left behind
    assert json.loads((out / "card.json").read_text()) == card
    assert card["data"]["sha256"] == data.REVIEWS_SHA256
    assert card["train_config"]["n_embd"] == 16 and card["steps"] == 4
    for figures in (card["heldout"], card["heldout_first_8_tokens"]):
        assert 0 <= figures["accuracy"] <= 1 and 0 <= figures["auroc"] <= 1 and figures["num_reviews"] == 32
    assert card["training_time_s"]["wall"] >= 0 and card["environment"]["threads"] == 1

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in model.parameters())  # stored fp16
    assert model.config.pad_token_id == data.GPT2_EOS_ID and model.config.num_labels == 1
    # The reward re-tokenises and truncates exactly as training did: same logits as on the training ids.
    texts = ["A fine film. " * 20, "dull", "Not my cup of tea, but well acted."]
    ids = [x[: TINY.n_positions] for x in data.tokenize(texts)]
    got = SentimentReward(out)(texts)
    assert got.dtype == np.float64 and got.shape == (3,)
    np.testing.assert_allclose(got, predict_logits(model, ids), atol=1e-5)

    with pytest.raises(FileExistsError, match="overwrite=True"):
        train_reward_model(TINY, out, log=lambda _: None)


def test_training_is_deterministic_for_a_seed(tiny_run, tmp_path):
    _, card = tiny_run
    again = train_reward_model(TINY, tmp_path / "again", log=lambda _: None)
    assert again["file_sha256"] == card["file_sha256"]  # the same weights, byte for byte
    assert again["heldout"] == card["heldout"]


def test_shipped_reward_prefers_positive_sentences():
    reward = SentimentReward()
    scores = reward(POSITIVE + NEGATIVE)
    assert scores.dtype == np.float64 and scores.shape == (20,) and np.isfinite(scores).all()
    pos, neg = scores[:10], scores[10:]
    assert pos.min() > neg.max() and pos.mean() > neg.mean() + 2.0  # every positive above every negative
    assert reward([]).shape == (0,)
    with pytest.raises(TypeError, match="list of texts"):
        reward("one string")


def test_shipped_card_matches_its_weights():
    card = json.loads((REWARD_DIR / "card.json").read_text())
    assert card["file_sha256"] == data.sha256_bytes((REWARD_DIR / "model.safetensors").read_bytes())
    assert card["data"]["sha256"] == data.REVIEWS_SHA256
    assert card["heldout"]["accuracy"] >= 0.8


def test_missing_artifact_names_the_rebuild_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=REBUILD_HINT):
        SentimentReward(tmp_path / "nowhere")


def test_cli_refuses_the_shipped_folder(capsys):
    for output in (ARTIFACTS_DIR, ARTIFACTS_DIR / "sub"):
        with pytest.raises(SystemExit) as e:
            main(["--output", str(output)])
        assert e.value.code == 2
    assert "shipped artifacts folder" in capsys.readouterr().err
