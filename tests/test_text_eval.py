"""The text evaluation: prompt / completion columns, the likelihood under the pretrained generator, paired win
rates, and the checks on a user's prompt file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from sepo_ray import evaluation
from sepo_ray.cli import evaluate
from sepo_ray.diffusion.score_entropy import elbo
from sepo_ray.stats import mean_std
from sepo_ray.tasks import get_task
from sepo_ray.tasks.text.likelihood import conditional_elbo


@pytest.fixture(scope="module")
def tiny_net():
    from sepo_ray.models import SEDDTransformer

    torch.manual_seed(0)
    net = SEDDTransformer(
        hidden_size=16, n_heads=2, n_blocks=1, cond_dim=8, vocab_size=get_task("text").num_tokens + 1,
        max_length=64, dropout=0.0,
    )  # fmt: skip
    with torch.no_grad():  # SEDD zero-initialises its output layers: give every weight a random value
        for p in net.parameters():
            p.normal_(0.0, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def tiny_generator(tiny_net, tmp_path_factory):
    from sepo_ray.models import save_model

    return save_model(tiny_net, tmp_path_factory.mktemp("gen") / "tiny.safetensors")


def test_conditional_elbo_without_prompt_is_the_score_entropy_elbo(tiny_net):
    x = torch.randint(0, 50, (3, 64), generator=torch.Generator().manual_seed(1))  # (3, 64)
    bound, tokens = conditional_elbo(
        tiny_net, x, torch.zeros(3, dtype=torch.long), 4, torch.Generator().manual_seed(2)
    )
    ref = elbo(tiny_net, x, num_draws=4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(bound, ref.double(), rtol=1e-5, atol=1e-4)
    assert tokens.tolist() == [64, 64, 64]


def test_conditional_elbo_clamps_the_prompt_and_scores_only_the_completion(tiny_net):
    mask = get_task("text").num_tokens
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.vocab_size = tiny_net, tiny_net.vocab_size

        def forward(self, z, sigma):
            seen.append(z.clone())
            return self.net(z, sigma)

    x = torch.randint(0, 50, (2, 64), generator=torch.Generator().manual_seed(3))  # (2, 64)
    x[1, 60:] = mask  # a completion that ends early: its last 4 positions are marginalised
    lengths = torch.tensor([10, 5])
    bound, tokens = conditional_elbo(Recording(), x, lengths, 8, torch.Generator().manual_seed(0))
    assert tokens.tolist() == [54, 55] and torch.isfinite(bound).all() and (bound < 0).all()
    z = seen[0].reshape(2, 8, 64)
    assert (z[0, :, :10] == x[0, :10]).all() and (z[1, :, :5] == x[1, :5]).all()  # the prompt, always
    assert (z[1, :, 60:] == mask).all() and (z == mask).any()
    # the prompt's tokens and what the net says about them do not enter the bound: change them, same value
    y = x.clone()
    y[0, :10] = x[0, :10].flip(0)
    again, _ = conditional_elbo(Recording(), y, lengths, 8, torch.Generator().manual_seed(0))
    assert again[1] == bound[1] and again[0] != bound[0]  # row 0's context changed, row 1 is untouched


def test_split_prompt_uses_the_given_prompt_else_the_held_out_one():
    task = get_task("text")
    cond = task.evaluation_prompts(0, 3)  # (3, 16)
    real = task.reference_rows()["real_heldout"](0, 3)  # their real continuations
    heads, tails = task.split_prompt(real, cond)
    assert heads == task.decode(cond) and [h + t for h, t in zip(heads, tails)] == real
    assert all(t for t in tails)
    assert task.split_prompt(real)[0] == heads  # found among the held-out prompts without being told
    assert task.split_prompt(["zzqx no such opening"]) == ([""], ["zzqx no such opening"])
    assert get_task("dna").split_prompt(["ACGT"]) == ([""], ["ACGT"])


def test_win_rates_pair_only_completions_of_the_same_prompt():
    frame = pd.DataFrame(
        {
            "row": ["pretrained"] * 2 + ["a"] * 2 + ["b"] * 2,
            "seed": [0] * 6,
            "prompt": ["p", "q", "p", "q", "p", "r"],
            "judge": [0.0, 0.0, 1.0, 0.0, 1.0, 1.0],
        }
    )
    assert evaluation.win_rates(frame, "a", "pretrained", "judge") == [0.75]
    assert evaluation.win_rates(frame, "b", "pretrained", "judge") == []  # "r" is not "q": not paired
    assert evaluation.win_rates(frame.drop(columns="prompt"), "b", "pretrained", "judge") == [1.0]
    metrics = {"a": {"judge_mean": mean_std([1.0]), "win_rate": mean_std([])}}
    assert "| a | 1.000 (0.000) | — |" in evaluation.format_table(metrics, {"judge_mean": "judge"})


def test_evaluate_text_writes_prompts_completions_and_the_pretrained_likelihood(tiny_generator, tmp_path):
    out = tmp_path / "ev"
    argv = ["text", "--model", f"pretrained,{tiny_generator}", "--num-samples", "3", "--seeds", "0,1"]
    assert evaluate.main(argv + ["--steps", "2", "--elbo-steps", "1", "--output", str(out)]) == 0
    samples = pd.read_parquet(out / "samples.parquet")
    assert list(samples.columns[:5]) == ["row", "seed", "prompt", "completion", "sequence"]
    assert "pretrained_nll_per_token" in samples and np.isfinite(samples["pretrained_nll_per_token"]).all()
    assert (samples["prompt"] + samples["completion"] == samples["sequence"]).all()
    assert (samples["prompt"] != "").all()
    by_row = {r: g.sort_values(["seed"], kind="stable")["prompt"].tolist() for r, g in samples.groupby("row")}
    assert by_row["pretrained"] == by_row["tiny"] == by_row["real_heldout"]  # the same prompts in every row
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"pretrained", "tiny", "real_heldout"}
    assert all("win_rate" in m and "pretrained_nll_per_token" in m for m in metrics.values())
    assert metrics["pretrained"]["win_rate"]["mean"] == 0.5
    assert "NLL / token under pretrained" in (out / "table.md").read_text()


def test_evaluate_text_on_a_prompt_file(tiny_generator, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("This film was\nI expected nothing, and\n", encoding="utf-8")
    out = tmp_path / "ev"
    argv = ["text", "--model", str(tiny_generator), "--num-samples", "4", "--seeds", "0", "--steps", "2"]
    assert evaluate.main(argv + ["--elbo-steps", "1", "--prompts", str(path), "--output", str(out)]) == 0
    samples = pd.read_parquet(out / "samples.parquet")
    assert set(samples["row"]) == {"tiny"}  # no real continuation of a user's prompt: no reference row
    assert set(samples["prompt"]) <= {"This film was", "I expected nothing, and"}
    assert json.loads((out / "run.json").read_text())["prompts"] == str(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("", "is empty: write one prompt per line"),
        ("A fine film\n\nThe end\n", "prompt 2 is empty"),
        ("   \n", "prompt 1 is empty"),
        ("word " * 17 + "\n", "prompt 1 is 17 GPT-2 tokens, longer than the prompt context"),
    ],
)
def test_bad_prompt_files_exit_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "prompts.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    rc = evaluate.main(
        ["text", "--prompts", str(path), "--output", str(tmp_path / "ev"), "--num-samples", "2"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"error: --prompts {path}: ") and message in err and "\n" not in err
    assert not (tmp_path / "ev").exists()


def test_a_task_without_prompts_refuses_a_prompt_file(tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    path.write_text("ACGT\n", encoding="utf-8")
    assert evaluate.main(["dna", "--prompts", str(path), "--output", str(tmp_path / "ev")]) == 2
    assert "takes no prompts" in capsys.readouterr().err


def test_win_rates_pair_rows_of_different_lengths_over_the_first_prompts():
    frame = pd.DataFrame(
        {
            "row": ["pretrained"] * 3 + ["bon"] * 2 + ["late"] * 2,
            "seed": [0] * 7,
            "prompt": ["p", "q", "r", "p", "q", "q", "r"],
            "judge": [0.0, 1.0, 0.0, 1.0, 1.0, 2.0, 2.0],
        }
    )
    assert evaluation.win_rates(frame, "bon", "pretrained", "judge") == [0.75]  # against p, q: win, tie
    assert evaluation.win_rates(frame, "late", "pretrained", "judge") == []  # q, r are not the first two
    no_prompts = frame.drop(columns="prompt")
    assert evaluation.win_rates(no_prompts, "bon", "pretrained", "judge") == []  # no way to pair them
    swapped = frame[frame.row != "late"].replace({"row": {"pretrained": "bon", "bon": "pretrained"}})
    assert evaluation.win_rates(swapped, "bon", "pretrained", "judge") == [0.25]  # the longer row: over p, q


def test_best_of_n_for_text_keeps_the_best_completion_of_each_prompt(monkeypatch, tmp_path):
    from sepo_ray.experiment.rows import best_of_n_row
    from sepo_ray.oracles import pool

    task, seen = get_task("text"), []

    def resolve(spec, timeout_s=None):
        def score(texts):
            seen.append(list(texts))
            return np.full(len(texts), float(len(seen)))  # the last chunk's candidates score highest

        return score

    monkeypatch.setattr(pool, "resolve_reward", resolve)
    row = best_of_n_row(
        task, {4: "pretrained"}, n=3, num=2, steps=2, reward="r", pools=tmp_path, timeout_s=5.0
    )
    kept = row(4)
    heads = task.decode(task.evaluation_prompts(4, 2))  # the seed's evaluation prompts, as every row's
    assert len(seen) == 3 and kept == seen[-1]  # N = 3 chunks of 2 candidates, one per prompt
    assert all(t.startswith(heads[i]) for chunk in seen for i, t in enumerate(chunk))  # design i: prompt i
    assert task.split_prompt(kept, task.evaluation_prompts(4, 2))[0] == heads


def test_text_compare_at_several_kl_weights_draws_the_reward_kl_frontier_and_pairs_best_of_n(
    tiny_net, tmp_path
):
    from sepo_ray.experiment import prepare, run_experiment
    from tests.test_experiment import fake_runs

    exp = prepare(
        "text", tmp_path, ["pretrained", "best_of_n", "sepo_t"], [4], [0, 1], design_size=2, design_batches=1,
        steps=2, elbo_steps=1, alphas=[0.1, 1.0], sets=["prompts_per_batch=1", "group_size=2", "denoise_steps=2"],
    )  # fmt: skip
    assert list(exp.entries) == ["pretrained", "best_of_n", "sepo_t_kl0.1", "sepo_t_kl1"]
    fake_runs(exp, model=lambda: tiny_net)
    report = run_experiment(exp)
    rows = {r["name"]: r for r in report["rows"]}
    assert (
        rows["sepo_t_kl1"]["config"]["kl_alpha"] == 1.0 and rows["sepo_t_kl0.1"]["config"]["kl_alpha"] == 0.1
    )
    assert rows["sepo_t_kl1"]["kl"] == pytest.approx(0.15)  # the mean of the last (<= 3) iterations' KL
    assert (tmp_path / "reward_kl.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    for seed in (0, 1):  # best-of-2 at 4 calls: 2 designs, completing the prompts every row completes
        bon = samples[(samples.row == "best_of_n") & (samples.seed == seed)]["prompt"].tolist()
        base = samples[(samples.row == "pretrained") & (samples.seed == seed)]["prompt"].tolist()
        assert len(bon) == 2 and bon == base
    assert 0.0 <= metrics["best_of_n"]["win_rate"]["mean"] <= 1.0
    assert "win_rate" in metrics["sepo_t_kl1"]
