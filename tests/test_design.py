"""``sepo-ray design``: the pure pieces, the sampling loop's bounds, and the command on the toy, DNA and text tasks."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sepo_ray.cli import design as design_cli
from sepo_ray.designs import (
    DesignError,
    apply_constraints,
    best_of_n,
    collect,
    dedupe,
    parse_rank_by,
    parse_select,
    rank,
)
from sepo_ray.tasks.dna.design import (
    contains_site,
    design_constraints,
    gc_fraction,
    longest_homopolymer,
    min_hamming,
    parse_gc,
    parse_sites,
    reverse_complement_text,
)

ROOT = Path(__file__).resolve().parents[1]
TOKENS = {c: i for i, c in enumerate("ACGT")}


def tokens(seqs: list[str]) -> torch.Tensor:
    return torch.tensor([[TOKENS[c] for c in s] for s in seqs])


# ------------------------------------------------------------------------------------------- pure pieces
def test_gc_homopolymer_and_both_strand_sites():
    assert gc_fraction(["GGCC", "AATT", "ACGT", "GAAA"]).tolist() == [1.0, 0.0, 0.5, 0.25]
    assert longest_homopolymer(["ACGT", "AAAC", "CAAAAAGG", "TTTTTTTT", ""]).tolist() == [1, 3, 5, 8, 0]
    assert reverse_complement_text("GGATCA") == "TGATCC"
    seqs = ["AAGGATCAAA", "AATGATCCAA", "AAAAAAAAAA", "GAATTCAAAA"]
    assert contains_site(seqs, "GGATCA").tolist() == [
        True,
        True,
        False,
        False,
    ]  # the site, its reverse complement
    assert contains_site(seqs, "GAATTC").tolist() == [False, False, False, True]  # a palindrome
    assert parse_gc("0.35:0.65") == (0.35, 0.65) and parse_sites("gaattc, GGATCC,GAATTC") == [
        "GAATTC",
        "GGATCC",
    ]
    for bad in ("0.7:0.3", "0.3", "a:b", "-0.1:0.5"):
        with pytest.raises(ValueError, match="--gc"):
            parse_gc(bad)
    with pytest.raises(ValueError, match="--forbid"):
        parse_sites("GAANTC")
    args = argparse.Namespace(gc="0.25:0.5", forbid="GGATCA", max_homopolymer=4)
    constraints = design_constraints(args)
    assert [name for name, _ in constraints] == ["gc 0.25:0.5", "forbid GGATCA", "max-homopolymer 4"]
    keep, failed = apply_constraints(seqs, constraints)
    # GC: 0.4, 0.3, 0, 0.2; site in the first two; runs of 3-4, 2, 10, 4
    assert keep.tolist() == [False, False, False, False]
    assert failed == {"gc 0.25:0.5": 2, "forbid GGATCA": 2, "max-homopolymer 4": 1}
    with pytest.raises(ValueError, match="--max-homopolymer"):
        design_constraints(argparse.Namespace(gc=None, forbid=None, max_homopolymer=0))


def test_min_hamming_against_a_hand_made_set_and_a_loop():
    reference = ["AAAAAAAA", "AACCGTTA", "CCCCGGGG"]
    query = ["AAAAAAAA", "AAAAAAAT", "AACCGTTC", "TTTTTTTT", "TAACGGTT", "CCCCGGGA"]
    # a copy; one change; one change; TTTTTTTT is AAAAAAAA on the other strand (6 from AACCGTTA on this one);
    # TAACGGTT is AACCGTTA's reverse complement (4 from it on this strand); one change
    assert min_hamming(tokens(query), tokens(reference)).tolist() == [0, 1, 1, 0, 0, 1]
    assert min_hamming(tokens(query), tokens(reference), both_strands=False).tolist() == [0, 1, 1, 6, 4, 1]
    rng = np.random.default_rng(0)
    q, r = torch.from_numpy(rng.integers(0, 4, (7, 30))), torch.from_numpy(rng.integers(0, 4, (50, 30)))
    loop = [min(int((a != b).sum()) for b in r) for a in q]
    assert min_hamming(q, r, both_strands=False, chunk=16).tolist() == loop  # chunks over the reference
    assert min_hamming(q, r[:0]).tolist() == [30] * 7


def test_best_of_n_dedupe_and_rank():
    rewards = np.array([0.1, 0.5, 0.2, 0.9, 0.9, 0.3])
    assert best_of_n(rewards, 2).tolist() == [1, 3, 4]  # pools (0,1), (2,3), (4,5); the first of a tie
    assert best_of_n(rewards, 3).tolist() == [1, 3] and best_of_n(rewards, 1).tolist() == list(range(6))
    with pytest.raises(ValueError, match="pools of 4"):
        best_of_n(rewards, 4)
    table = pd.DataFrame(
        {"id": ["a", "b", "c", "d"], "sequence": ["X", "Y", "X", "Z"], "reward": [1.0, 3.0, 2.0, np.nan]}
    )
    table, removed = dedupe(table)
    assert removed == 1 and table["id"].tolist() == ["a", "b", "d"]
    ranked = rank(table, "reward")
    assert ranked["id"].tolist() == ["b", "a", "d"] and ranked["rank"].tolist() == [1, 2, 3]  # NaN last
    assert list(ranked.columns) == ["id", "rank", "sequence", "reward"]
    assert rank(table, "reward", descending=False)["id"].tolist() == ["a", "b", "d"]
    assert parse_select(None) == 1 and parse_select("best-of-8") == 8
    with pytest.raises(ValueError, match="best-of-N"):
        parse_select("best8")
    assert parse_rank_by("gc:asc", ["reward", "gc"]) == ("gc", False)
    with pytest.raises(ValueError, match="choose one of: reward, gc"):
        parse_rank_by("nope", ["reward", "gc"])


def test_collect_counts_dedupes_and_stops_early_when_nothing_can_pass():
    rng = np.random.default_rng(0)

    def draw(groups):
        return ["".join(rng.choice(list("AC"), 3)) for _ in groups]  # 8 distinct sequences: many repeats

    no_c3 = ("no CCC", lambda s: np.array(["CCC" not in x for x in s]))
    found = collect(draw, [3, 2], [no_c3], max_draws=500, log=None)
    assert [len(a) for a in found.accepted] == [3, 2]
    assert all(len(set(a)) == len(a) and "CCC" not in a for a in found.accepted)
    assert found.drawn - found.rejected - found.duplicates >= 5 and found.duplicates > 0
    assert found.failed["no CCC"] == found.rejected
    never = ("never", lambda s: np.zeros(len(s), dtype=bool))
    lines = []
    with pytest.raises(DesignError, match=r"only 0 of 100 designs after 150 draws \(never rejected 150"):
        collect(draw, [100], [never], max_draws=5000, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("batch 1: 0/100 accepted, 150 drawn, 150 rejected")
    with pytest.raises(DesignError, match="the bound of 40 draws"):
        collect(draw, [100], [], max_draws=40, log=None)  # too few distinct sequences exist
    clock = iter(range(0, 10**6, 100))
    with pytest.raises(DesignError, match="time limit of 50 s"):
        collect(
            draw,
            [6],
            [no_c3],
            max_draws=10**6,
            time_limit_s=50,
            batch_size=1,
            clock=lambda: next(clock),
            log=None,
        )


# ------------------------------------------------------------------------------------------- the command
def run_cli(argv, capsys):
    rc = design_cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_toy_best_of_n_costs_n_times_the_calls_and_raises_the_reward(tmp_path, capsys):
    base = ["toy", "--n", 12, "--steps", 6, "--seed", 3, "--compare-samples", 0]
    assert run_cli([*base, "--output", tmp_path / "plain"], capsys)[0] == 0
    assert run_cli([*base, "--output", tmp_path / "again"], capsys)[0] == 0
    rc, out, _ = run_cli([*base, "--select", "best-of-4", "--output", tmp_path / "best"], capsys)
    assert rc == 0 and "reward: 48 calls" in out
    plain, again, best = (
        pd.read_parquet(tmp_path / d / "designs.parquet") for d in ("plain", "again", "best")
    )
    assert plain.equals(again)  # seeded: the same order gives the same designs
    assert len(best) == 12 and best.sequence.is_unique and (best.candidates == 4).all()
    assert best.reward.mean() > plain.reward.mean()
    assert best.reward.is_monotonic_decreasing and best["rank"].tolist() == list(range(1, 13))
    summary = json.loads((tmp_path / "best" / "summary.json").read_text())
    assert summary["reward_oracle_calls"] == 48 and summary["select"] == "best-of-4"
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["reward_oracle_calls"] == 12
    assert "| reward-oracle calls | 48 |" in (tmp_path / "best" / "summary.md").read_text()


def test_an_existing_output_and_bad_options_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    rc, _, err = run_cli(["toy", "--n", 4, "--output", out], capsys)
    assert rc == 2 and err.count("\n") == 1 and "exists already" in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    for argv, message in (
        (["--rank-by", "nope"], "is not a column"),
        (["--select", "best-4"], "best-of-N"),
        (["--n", 0], "--n must be"),
        (["--reward", "no_such_reward"], "not a registered oracle"),
        (["--model", tmp_path / "missing.safetensors"], "missing"),
        (["--prompts", tmp_path / "p.txt"], "takes no prompts"),
    ):
        rc, _, err = run_cli(["toy", "--output", tmp_path / "new", *argv], capsys)
        assert rc == 2 and message in err and err.count("\n") == 1, (argv, err)
    rc, _, err = run_cli(["dna", "--output", tmp_path / "new", "--gc", "0.9:0.1"], capsys)  # a task's option
    assert rc == 2 and "--gc 0.9:0.1" in err
    assert not (tmp_path / "new").exists()
    assert not list(tmp_path.glob(".new.partial-*"))


@pytest.fixture(scope="module")
def tiny_dna(tmp_path_factory):
    """A tiny DNA generator as a file and as a run folder (its final checkpoint), trained on reward dna_ft."""
    from sepo_ray.models import save_model
    from sepo_ray.tasks.dna.models import DNAConvDenoiser

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny")
    path = save_model(DNAConvDenoiser(hidden_dim=8, num_cnn_stacks=1).eval(), folder / "tiny.safetensors")
    run = folder / "run"
    (run / "checkpoints" / "iter_0001").mkdir(parents=True)
    (run / "checkpoints" / "iter_0001" / "generator.safetensors").write_bytes(path.read_bytes())
    settings = {"task": "dna", "reward": "dna_ft", "denoise_steps": 4}
    (run / "result.json").write_text(
        json.dumps({"settings": settings, "final_checkpoint": "checkpoints/iter_0001"})
    )
    exported = folder / "exported"  # as `sepo-ray export` writes one: the weights and the run's settings
    exported.mkdir()
    (exported / "generator.safetensors").write_bytes(path.read_bytes())
    (exported / "config.json").write_text(json.dumps({"settings": {**settings, "reward": "dna_eval"}}))
    return path, run, exported


def test_dna_designs_from_a_generator_file_a_run_folder_and_an_exported_model(tiny_dna, tmp_path, capsys):
    path, run, exported = tiny_dna
    argv = ["dna", "--n", 4, "--steps", 4, "--gc", "0.2:0.8", "--forbid", "GAATTC", "--max-homopolymer", 10]
    rc, out, err = run_cli(
        [*argv, "--model", path, "--select", "best-of-2", "--compare-samples", 4, "--output", tmp_path / "f"],
        capsys,
    )
    assert rc == 0, err
    table = pd.read_parquet(tmp_path / "f" / "designs.parquet")
    assert len(table) == 4 and table.sequence.str.len().eq(200).all() and (table.candidates == 2).all()
    for column in ("reward", "ft_oracle", "pred_activity", "atac", "guard", "log_lik", "gc", "novelty"):
        assert np.isfinite(table[column].to_numpy(dtype=float)).all(), column
    assert table.top_motifs.str.count(" p=").eq(3).all() and table.liver_motif_hits.ge(0).all()
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["reward"] == "dna_ft_accessible" and summary["reward_oracle_calls"] == 8
    assert set(summary["comparison"]) == {"designs", "pretrained", "real_hepg2_test", "real_nonhepg2_test"}
    assert {"score_distribution.png", "motif_enrichment.png", "designs.fasta"} <= set(summary["files"])
    md = (tmp_path / "f" / "summary.md").read_text()
    assert "![" in md and "rejected by forbid GAATTC" in md and "novelty" in md
    fasta = (tmp_path / "f" / "designs.fasta").read_text().splitlines()
    assert fasta[0].startswith(f">{table.id[0]} rank=1 reward=") and fasta[1::2] == table.sequence.tolist()

    rc, out, err = run_cli(
        ["dna", "--n", 3, "--model", run, "--compare-samples", 0, "--output", tmp_path / "r"], capsys
    )
    assert rc == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["reward"] == "dna_ft" and summary["steps"] == 4  # the run's own reward and sampler steps
    assert "the run's reward" in summary["reward_source"]
    assert "(4 sampler steps" in out
    argv = ["dna", "--n", 2, "--model", exported, "--compare-samples", 0, "--output", tmp_path / "e"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["reward"] == "dna_eval"
    rc, _, err = run_cli(["text", "--model", run, "--output", tmp_path / "x"], capsys)
    assert rc == 2 and "trained on the task 'dna'" in err


def test_text_designs_complete_a_prompt_file(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("This movie was\nThe acting in this film\n")
    argv = [
        "text",
        "--prompts",
        prompts,
        "--n",
        2,
        "--steps",
        4,
        "--compare-samples",
        2,
        "--output",
        tmp_path / "t",
    ]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    records = [json.loads(line) for line in (tmp_path / "t" / "designs.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        assert {"id", "prompt", "completion", "reward", "judge"} <= set(r)
        assert r["prompt"] in ("This movie was", "The acting in this film") and -1 <= r["judge"] <= 1
    assert [r["reward"] for r in records] == sorted((r["reward"] for r in records), reverse=True)
    table = pd.read_parquet(tmp_path / "t" / "designs.parquet")
    assert sorted(table.prompt_index.value_counts().tolist()) == [2, 2]
    assert (table.prompt + table.completion == table.sequence).all()


# ------------------------------------------------------------------------------------------- the contract
def _design(*argv, timeout=600):
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "sepo_ray.design", "dna", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    return out, time.perf_counter() - t0


@pytest.mark.slow
def test_the_contract_command(tmp_path):
    d = tmp_path / "D"
    out, _ = _design("--model", "pretrained", "--n", 100, "--gc", "0.35:0.65", "--forbid", "GAATTC",
                     "--max-homopolymer", 8, "--output", d)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = (d / "designs.fasta").read_text().splitlines()
    headers, seqs = lines[0::2], lines[1::2]
    assert len(seqs) == 100 == len(set(seqs)) and all(h.startswith(">") for h in headers)
    for s in seqs:
        assert len(s) == 200 and set(s) <= set("ACGT")
        assert 0.35 <= (s.count("G") + s.count("C")) / 200 <= 0.65
        assert "GAATTC" not in s and reverse_complement_text("GAATTC") not in s
        assert max(len(m.group(0)) for m in re.finditer(r"(.)\1*", s)) <= 8
    table = pd.read_parquet(d / "designs.parquet")
    assert table.sequence.tolist() == seqs
    numeric = [c for c in table.columns if c not in ("rank",) and pd.api.types.is_float_dtype(table[c])]
    assert len(numeric) >= 5, numeric
    assert (d / "summary.md").is_file() and (d / "score_distribution.png").stat().st_size > 1000


@pytest.mark.slow
def test_constraints_no_sequence_meets_fail_in_bounded_time(tmp_path):
    out, seconds = _design("--n", 100, "--gc", "0.99:1.0", "--output", tmp_path / "D", timeout=300)
    assert out.returncode == 2 and seconds < 120, (out.returncode, seconds)
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: only 0 of 100 designs"), out.stderr
    assert not (tmp_path / "D").exists()
