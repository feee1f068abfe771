"""The frontier: SVDD guidance on an exact toy, budget accounting, equal tuning, frontier outputs and caching."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from sepo_ray import compare, evaluation, frontier
from sepo_ray.diffusion import LogLinearSchedule, step
from sepo_ray.diffusion.guidance import predicted_clean, selection_probs, svdd_plan, svdd_sample, svdd_step
from sepo_ray.sepo.toy import ExactToy, ToyDenoiser, encode

M, L, T = 2, 2, 2


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ExactToy(ToyDenoiser(M, L), T)


def count_zeros(x):
    """A toy value: 1.5 x the number of token 0 (x (N, L) -> (N,))."""
    return 1.5 * (x == 0).sum(-1).double()


def svdd_law(toy, value, candidates, temperature):
    """Exact law of the clean sample when every step is an SVDD step: per state z, every M-tuple of iid next
    states weighted by prod P(c_i | z) (the sampler's step), times the selection law svdd_step gives it."""
    sched, states = LogLinearSchedule(), toy.states  # (S, L)
    num = len(states)
    mu = torch.zeros(num, dtype=torch.float64)
    mu[toy.start_index] = 1.0
    for k in range(T, 0, -1):
        t, s = k / T, (k - 1) / T
        kernel = torch.zeros(num, num, dtype=torch.float64)
        for i in torch.nonzero(mu).flatten().tolist():
            z = states[i].expand(num, L)
            with torch.no_grad():
                p = step(toy.model, z, t, s, sched, z_next=states).log_prob.exp()  # (S,)
            support = torch.nonzero(p > 0).flatten().tolist()
            tuples = torch.tensor(list(itertools.product(support, repeat=candidates)))  # (U, M)
            res = svdd_step(
                toy.model, states[i].expand(len(tuples), L), t, s, sched, value, candidates, temperature,
                candidates=states[tuples],
            )  # fmt: skip
            weight = p[tuples].prod(dim=1)  # (U,)
            kernel[i].index_add_(0, tuples.flatten(), (weight[:, None] * res.probs).flatten())
        mu = mu @ kernel
    return mu[toy.clean_index]  # (C,)


def test_selection_law_by_hand():
    v = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0]])
    assert torch.equal(
        selection_probs(v, 0.0), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    )
    e = [math.exp(1 / 0.5), math.exp(3 / 0.5), math.exp(2 / 0.5)]
    assert selection_probs(v, 0.5)[0].tolist() == pytest.approx([x / sum(e) for x in e])
    assert selection_probs(v, 1e-3)[0].argmax() == 1 and selection_probs(v, 1e-3)[0, 1] > 1 - 1e-12
    with pytest.raises(ValueError, match="NaN"):
        selection_probs(torch.tensor([[float("nan"), 0.0]]), 1.0)


def test_temperature_zero_keeps_the_best_candidate(toy):
    sched = LogLinearSchedule()
    z = torch.full((1, L), M)
    cands = torch.tensor([[[0, 1], [1, 1], [0, 0]]])  # (1, 3, L): values 1.5, 0, 3
    res = svdd_step(toy.model, z, 0.5, 0.0, sched, count_zeros, 3, 0.0, candidates=cands)
    assert (
        res.z_next.tolist() == [[0, 0]] and res.values.tolist() == [[1.5, 0.0, 3.0]] and res.oracle_calls == 3
    )
    # a batch: each row keeps its own best candidate
    z2 = torch.full((2, L), M)
    cands2 = torch.tensor([[[1, 1], [0, 1]], [[0, 0], [1, 0]]])  # values [0, 1.5], [3, 1.5]
    res2 = svdd_step(toy.model, z2, 0.5, 0.0, sched, count_zeros, 2, 0.0, candidates=cands2)
    assert res2.z_next.tolist() == [[0, 1], [0, 0]] and res2.values.tolist() == [[0.0, 1.5], [3.0, 1.5]]
    # a masked candidate is valued at its predicted clean sequence (argmax of the model there)
    logits = toy.model(torch.tensor([[M, 1]]))
    assert predicted_clean(logits, torch.tensor([[M, 1]])).tolist() == [[int(logits[0, 0].argmax()), 1]]


def test_constant_value_gives_exactly_the_plain_sampler_law(toy):
    for temperature in (0.0, 0.7):
        law = svdd_law(toy, lambda x: torch.zeros(len(x)), candidates=2, temperature=temperature)
        assert torch.allclose(law, toy.pi().detach(), atol=1e-12, rtol=0)


def test_svdd_sampler_draws_the_enumerated_law_and_tilts_towards_the_value(toy):
    exact = svdd_law(toy, count_zeros, candidates=2, temperature=0.5)
    assert exact.sum().item() == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    res = svdd_sample(toy.model, count_zeros, n, L, T, 2, (1, 2), temperature=0.5, generator=g)
    freq = torch.bincount(encode(res.x, M), minlength=M**L).double() / n
    assert 0.5 * (freq - exact).abs().sum() < 0.01
    values = count_zeros(toy.clean)
    plain = toy.pi().detach()
    assert (exact * values).sum() > (plain * values).sum() + 0.2
    assert res.oracle_calls == n * 2 * 2


@pytest.mark.parametrize(
    "calls,steps,most,expected",
    [(8, 32, 4, (4, (1, 17))), (32, 32, 4, (4, (1, 5, 9, 13, 17, 21, 25, 29))), (3, 32, 4, (3, (1,))),
     (200, 32, 4, (6, tuple(range(1, 33))))],
)  # fmt: skip
def test_svdd_plan_spends_at_most_the_budget(calls, steps, most, expected):
    num, ks = svdd_plan(calls, steps, most)
    assert (num, ks) == expected and num * len(ks) <= calls


def test_svdd_calls_counted_equal_the_budget(toy):
    seen = []

    def value(x):
        seen.append(len(x))
        return count_zeros(x)

    design, budget = 8, 64
    num, ks = svdd_plan(budget // design, T, 4)
    res = svdd_sample(toy.model, value, design, L, T, num, ks, generator=torch.Generator().manual_seed(1))
    assert sum(seen) == res.oracle_calls == budget


# ------------------------------------------------------------------------------------------- frontier
SMALL = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4"]


def frontier_args(out, *extra):
    return ["toy", "--frontier", "--output", str(out), "--budgets", "32,64", "--design-size", "8",
            "--design-batches", "2", "--seeds", "0,1", "--tune-trials", "0", "--svdd-candidates", "2",
            "--methods", "pretrained,best_of_n,svdd,sepo,finetuned_best_of_n", *SMALL, *extra]  # fmt: skip


def test_frontier_rows_spend_their_budget_and_a_rerun_evaluates_nothing(
    ray_session, tmp_path, monkeypatch, capsys
):
    assert compare.main(frontier_args(tmp_path, "--set", "sepo.kl_alpha=0.5")) == 0
    report = json.loads((tmp_path / "frontier.json").read_text())
    rows = {(r["method"], r["budget_calls"]): r for r in report["rows"]}
    expected = {("pretrained", 0)} | {
        (m, b) for m in ("best_of_n", "svdd", "sepo", "finetuned_best_of_n") for b in (32, 64)
    }
    expected.add(("sepo", 16))  # the half budget finetuned_best_of_n picks its method at
    assert set(rows) == expected
    for (method, budget), row in rows.items():
        assert row["calls"]["fine_tuning"] + row["calls"]["selection"] == budget, (method, budget)
        assert row["seeds"] == [0, 1] and row["sequences_per_seed"] == 16
        for stats in row["metrics"].values():
            assert stats["se"] == pytest.approx(stats["std"] / math.sqrt(2))
    assert rows[("svdd", 64)]["counted_calls"] == {"0": [64, 64], "1": [64, 64]}
    assert (
        rows[("svdd", 32)]["config"]["candidates"] * len(rows[("svdd", 32)]["config"]["scored_steps"]) * 8
        == 32
    )
    assert rows[("best_of_n", 64)]["config"] == {"n": 8}
    assert rows[("sepo", 64)]["config"]["kl_alpha"] == 0.5 and rows[("sepo", 64)]["iterations"] == 8
    combo = rows[("finetuned_best_of_n", 64)]
    assert combo["calls"] == {"fine_tuning": 32, "selection": 32} and combo["config"]["n"] == 4
    assert combo["config"]["base_method"] == "sepo" and combo["config"]["iterations"] == 4
    record = json.loads((tmp_path / "runs" / "sepo" / "seed1" / "result.json").read_text())
    assert [c.rsplit("_", 1)[1] for c in record["checkpoints"]] == ["0002", "0004", "0006", "0008"]
    text = (tmp_path / "frontier.md").read_text()
    for budget in (32, 64):
        best = frontier.best_row(
            [r for r in report["rows"] if r["budget_calls"] == budget], "reward_mean", None, 0
        )
        assert f"At {budget} calls the best row by reward (mean) is {best['method']}" in text
    assert (tmp_path / "frontier.png").stat().st_size > 0

    def refuse(*args, **kwargs):
        raise AssertionError("evaluated or trained again")

    monkeypatch.setattr(evaluation, "evaluate_rows", refuse)
    monkeypatch.setattr("sepo_ray.run.train", refuse)
    capsys.readouterr()
    assert compare.main(frontier_args(tmp_path, "--set", "sepo.kl_alpha=0.5")) == 0
    assert capsys.readouterr().out.count(": reusing ") == len(expected)
    assert json.loads((tmp_path / "frontier.json").read_text()) == report
    # a run trained with other settings is never overwritten
    assert compare.main(frontier_args(tmp_path, "--set", "sepo.kl_alpha=0.1")) == 2
    assert "use another --output" in capsys.readouterr().err


def test_frontier_refuses_budgets_it_cannot_spend_exactly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main(frontier_args(tmp_path, "--budgets", "36"))
    assert "multiple of --design-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(frontier_args(tmp_path, "--budgets", "36", "--methods", "sepo"))
    assert "not a whole number of iterations of 8 sequences" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a tuning trial's calls are whole iterations too
        compare.main(frontier_args(tmp_path, "--tune-trials", "2", "--tune-calls", "12"))
    assert "--tune-calls for sepo: 12 calls is not a whole number of iterations" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(frontier_args(tmp_path, "--tune-only"))
    assert "--tune-only needs --tune-trials >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(frontier_args(tmp_path, "--set", "bogus.lr=1"))
    assert "'bogus' is not a fine-tuning method" in capsys.readouterr().err
    for fixed in ("reward=x:y", "sepo.reward=x:y"):  # best-of-N would select on another reward
        with pytest.raises(SystemExit):
            compare.main(frontier_args(tmp_path, "--set", fixed))
        assert "trains and selects every method on the task's reward" in capsys.readouterr().err


def test_best_row_keeps_to_the_realism_guard():
    def row(method, score, realism):
        return {"method": method, "metrics": {"s": {"mean": score}, "r": {"mean": realism}}}

    rows = [row("hack", 3.0, 0.5), row("real", 1.0, 0.95), row("pretrained", -1.0, 0.97)]
    assert frontier.best_row(rows, "s", "r", 0.9)["method"] == "real"
    assert frontier.best_row(rows, "s", None, 0.9)["method"] == "hack"
    assert frontier.best_row(rows, "s", "r", 0.99) is None


def test_every_method_gets_the_same_search():
    from sepo_ray.tasks import get_task

    task = get_task("toy")
    specs = {
        m: frontier.tuning_sweep(task, m, {"denoise_steps": 4}, ["kl_alpha", "lr"], 4, 0, 64, 0.85, 64, 2)
        for m in frontier.FINETUNE
    }
    first = specs["sepo"]
    for m, spec in specs.items():
        assert spec.base_config["objective"] == m
        assert {k: v for k, v in spec.base_config.items() if k != "objective"} == {
            k: v for k, v in first.base_config.items() if k != "objective"
        }
        for key in ("search_space", "scheduler", "num_samples", "search_seed", "select_min", "stop"):
            assert getattr(spec, key) == getattr(first, key), key
    # one clock for all: the oracle calls a trial has spent, rungs at a quarter and a half of them
    assert first.scheduler.time_attr == "num_env_steps_sampled_lifetime" == frontier.tuning.TUNE_CLOCK
    assert (first.scheduler.max_t, first.scheduler.grace_period) == (64, 16) and first.stop == {}
    assert first.select_min == {"sepo/heldout_realism": 0.85}
    assert [p.field for p in first.search_space] == ["kl_alpha", "lr"]
    dna = frontier.tuning_sweep(get_task("dna"), "trajectory", {}, ["kl_alpha"], 2, 0, 64, 0.9, 64, 2)
    assert dna.base_config["reward"] == "dna_ft" == get_task("dna").default_reward  # the benchmark's reward
    assert "kl_alpha" not in dna.base_config and "kl_alpha" in get_task("dna").default_settings  # searched
    # the runs' too: best-of-N and SVDD select on default_reward, every fine-tuning method trains on it
    assert (
        get_task("dna").benchmark_reward_pin() == {"reward": "dna_ft"} and task.benchmark_reward_pin() == {}
    )


def test_tuning_writes_its_choice_and_the_runs_use_it(ray_session, tmp_path, monkeypatch, capsys):
    from sepo_ray import sweep
    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.runtime import write_json

    searched = []

    def fake_sweep(spec, output, resume=False, **kwargs):  # Tune itself is tested in test_sweep
        sweep.check_against_config(spec, SEPOConfig)  # the spec is one SEPOConfig accepts
        searched.append(spec)
        rows = [{"trial_id": "a", "status": "TERMINATED", "config": {"kl_alpha": 0.05}, "history": [
            {"sepo/reward_mean": 0.3, "num_env_steps_sampled_lifetime": 16, "training_iteration": 2}]}]  # fmt: skip
        report = sweep.sweep_report(spec, rows)
        write_json(output / "sweep.json", report)
        return report

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    args = frontier_args(
        tmp_path, "--methods", "sepo", "--budgets", "16", "--seeds", "0", "--tune-trials", "3"
    )
    args += ["--set", "sepo.lr=1e-3", "--tune-realism", "0", "--tune-calls", "16"]
    assert compare.main([*args, "--tune-only"]) == 0  # tunes, trains nothing
    (spec,) = searched
    assert spec.num_samples == 3 and [p.field for p in spec.search_space] == ["kl_alpha"]  # lr fixed by --set
    assert spec.scheduler.max_t == 16 and spec.base_config["lr"] == 1e-3
    assert "tuned sepo: {'kl_alpha': 0.05} (tune)" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "frontier.json").exists()
    assert compare.main(args) == 0 and len(searched) == 1  # the frontier reuses the search it tuned
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    assert tuning["sepo"]["source"] == "tune" and tuning["sepo"]["config"] == {"kl_alpha": 0.05}
    assert (tmp_path / tuning["sepo"]["sweep"]).is_file()
    record = json.loads((tmp_path / "runs" / "sepo" / "seed0" / "result.json").read_text())
    assert record["overrides"]["kl_alpha"] == 0.05 and record["overrides"]["lr"] == 1e-3
    report = json.loads((tmp_path / "frontier.json").read_text())
    assert report["rows"][0]["config"]["kl_alpha"] == 0.05 and report["tuning"]["sepo"]["source"] == "tune"

    capsys.readouterr()
    assert compare.main(args) == 0 and len(searched) == 1  # the same search: reused, not run again
    assert "tuning sepo: reusing" in capsys.readouterr().out
