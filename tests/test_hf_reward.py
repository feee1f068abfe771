"""`--reward hf:DIR`: a local Hugging Face sequence-classification folder as the reward (tiny random models)."""

from __future__ import annotations

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")


def _save(folder, num_labels: int, with_tokenizer: bool = True):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from sepo_ray.tasks.text.data import gpt2_tokenizer

    cfg = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64, num_labels=num_labels)
    if num_labels == 2:
        cfg.id2label, cfg.label2id = {0: "NEGATIVE", 1: "POSITIVE"}, {"NEGATIVE": 0, "POSITIVE": 1}
    model = GPT2ForSequenceClassification(cfg)
    model.save_pretrained(folder)
    if with_tokenizer:
        gpt2_tokenizer().save_pretrained(folder)
    return model


def test_one_output_model_scores_its_logit_batched(tmp_path):
    import torch

    from sepo_ray.oracles import check_reward_spec, resolve_reward

    model = _save(tmp_path / "rm", 1)
    texts = ["a fine film", "dull and long, a waste of two hours", "ok"] * 3
    check_reward_spec(f"hf:{tmp_path / 'rm'}")
    reward = resolve_reward(f"hf:{tmp_path / 'rm'}")
    got = reward(texts)
    assert got.shape == (9,) and np.isfinite(got).all()
    from sepo_ray.oracles.hf import HFSequenceClassifierReward

    small_batches = HFSequenceClassifierReward(f"hf:{tmp_path / 'rm'}", batch_size=2)(texts)
    np.testing.assert_allclose(small_batches, got, rtol=1e-5, atol=1e-5)  # padding does not change a score
    tok = HFSequenceClassifierReward(f"hf:{tmp_path / 'rm'}").tokenizer
    with torch.no_grad():
        one = model.eval()(**tok(["a fine film"], return_tensors="pt")).logits[0, 0]
    assert got[0] == pytest.approx(float(one), abs=1e-5)


def test_labelled_model_needs_a_label_and_gives_log_odds(tmp_path):
    from sepo_ray.oracles import check_reward_spec, resolve_reward

    _save(tmp_path / "clf", 2)
    with pytest.raises(ValueError, match=r"2 labels \(NEGATIVE, POSITIVE\); choose one with hf:DIR#LABEL"):
        check_reward_spec(f"hf:{tmp_path / 'clf'}")
    with pytest.raises(ValueError, match="no label 'NEUTRAL'"):
        check_reward_spec(f"hf:{tmp_path / 'clf'}#NEUTRAL")
    pos = resolve_reward(f"hf:{tmp_path / 'clf'}#POSITIVE")(["good", "bad"])
    neg = resolve_reward(f"hf:{tmp_path / 'clf'}#0")(["good", "bad"])
    np.testing.assert_allclose(pos, -neg, atol=1e-5)  # binary log-odds are antisymmetric


def test_wrong_folders_are_clear_errors(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from sepo_ray.oracles import check_reward_spec

    with pytest.raises(ValueError, match="is not a directory"):
        check_reward_spec(f"hf:{tmp_path / 'nothing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        check_reward_spec(f"hf:{tmp_path / 'empty'}")
    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="holds GPT2LMHeadModel, not a ...ForSequenceClassification model"):
        check_reward_spec(f"hf:{tmp_path / 'lm'}")
    _save(tmp_path / "notok", 1, with_tokenizer=False)
    assert len(json.loads((tmp_path / "notok" / "config.json").read_text())["id2label"]) == 1
    from sepo_ray.oracles import resolve_reward

    with pytest.raises(ValueError, match="no usable tokenizer files"):
        resolve_reward(f"hf:{tmp_path / 'notok'}")
