"""The evaluation protocol's pure parts: intervals, verdicts, seeds, the cost of K designs and who wins at each K."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sepo_ray.protocol import (
    calls_for_designs,
    check_seeds,
    paired_verdict,
    protocol_record,
    seed_summary,
    t_interval,
    winners_by_designs,
)


def test_t_interval_is_the_student_t_interval():
    # values 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t_{0.975, 2} = 4.302652729749464
    low, high = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert low == pytest.approx(2 - half, abs=1e-12) and high == pytest.approx(2 + half, abs=1e-12)
    assert all(math.isnan(v) for v in t_interval([5.0]))
    s = seed_summary([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["n"] == 3 and s["ci95"] == [low, high]
    assert s["se"] == pytest.approx(1 / math.sqrt(3)) and s["values"] == [1.0, 2.0, 3.0]


def test_paired_verdict_calls_ties_ties():
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert paired_verdict([x + 1 for x in a], a)["verdict"] == "beats"  # difference exactly 1, no spread
    assert paired_verdict(a, [x + 1 for x in a])["verdict"] == "loses"
    # differences +1, -1, +1, -1, +1: mean 0.2, the interval covers 0
    v = paired_verdict([1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0])
    assert v["verdict"] == "tie" and v["ci95"][0] < 0 < v["ci95"][1] and v["difference"] == pytest.approx(0.2)
    # pairing matters: the same values unpaired would overlap, paired they differ by a constant
    assert paired_verdict([10.0, 20.0, 30.0], [9.0, 19.0, 29.0])["verdict"] == "beats"
    assert paired_verdict([1.0, 2.0], [0.0, 0.0], higher_is_better=False)["verdict"] in ("loses", "tie")
    assert paired_verdict([3.0], [1.0])["verdict"] == "tie"  # one pair: no interval, no claim
    with pytest.raises(ValueError, match="pairs seed by seed"):
        paired_verdict([1.0, 2.0], [1.0])


def test_seeds_that_tune_are_never_reported():
    check_seeds([0, 1, 2, 3, 4], [1000])
    with pytest.raises(ValueError, match=r"seeds \[0\] would both tune and be reported"):
        check_seeds([0, 1], [0])


def _row(name, method, train, per_design, tuning, values):
    return {"name": name, "method": method, "cost": {"train": train, "per_design": per_design},
            "tuning_calls": tuning, "metrics": {"score": seed_summary(values), "real": seed_summary([1.0] * 5)}}  # fmt: skip


def test_the_winner_depends_on_how_many_designs():
    """Best-of-N pays per design, fine-tuning once: selection wins at 64 designs, fine-tuning at 6,400."""
    assert calls_for_designs({"train": 512, "per_design": 0}, 1024, 6400) == 1536
    assert calls_for_designs({"train": 0, "per_design": 8}, 0, 640) == 5120
    rows = [
        _row("pretrained", "pretrained", 0, 0, 0, [0.0, 0.1, 0.0, 0.1, 0.0]),
        _row("best_of_n@512", "best_of_n", 0, 8, 0, [3.0, 3.1, 3.0, 3.2, 3.1]),  # 8 calls per design
        _row("best_of_n@128", "best_of_n", 0, 2, 0, [1.0, 1.1, 1.0, 1.1, 1.0]),
        _row("sepo@512", "sepo", 512, 0, 1024, [2.0, 2.2, 2.1, 2.0, 2.1]),  # 1,536 calls whatever K
    ]
    w = winners_by_designs(rows, [64, 640, 6400], "score", "real", 0.9)
    assert w["64"]["budget_calls"] == 1536 and w["64"]["winner"] == "best_of_n@512"  # 512 calls for 64
    assert w["64"]["verdict"] == "beats" and w["64"]["runner_up"] == "sepo@512"
    # 640 designs: best-of-8 costs 5,120 > 1,536; best-of-2 costs 1,280 and trails sepo
    assert w["640"]["winner"] == "sepo@512" and w["640"]["runner_up"] == "best_of_n@128"
    assert w["6400"]["winner"] == "sepo@512" and w["6400"]["runner_up"] == "pretrained"
    names = [e["name"] for e in w["6400"]["entries"]]
    assert "best_of_n@128" not in names  # 12,800 calls: over budget
    # a tie when the seed-paired interval covers 0
    rows[3] = _row("sepo@512", "sepo", 512, 0, 0, [3.3, 2.9, 3.2, 2.9, 3.1])
    assert winners_by_designs(rows, [64], "score", "real", 0.9)["64"]["verdict"] == "tie"
    # the realism guard removes a row that reward-hacks
    rows[1]["metrics"]["real"] = seed_summary([0.5] * 5)
    assert winners_by_designs(rows, [64], "score", "real", 0.9)["64"]["winner"] == "sepo@512"


def test_protocol_record_has_the_contract_fields():
    p = protocol_record("validation", ["a", "b"], [1000], [0, 1, 2], {"sepo": 1024}, [64, 640], 5, 2, 512)
    for key in (
        "selection_signal",
        "evaluation_signals",
        "tuning_seeds",
        "report_seeds",
        "tuning_calls",
        "designs",
    ):
        assert key in p
    assert p["exploratory"] is True and p["tuning_calls"] == {"sepo": 1024} and p["designs"] == [64, 640]


def test_threads_are_pinned_and_recorded():
    from sepo_ray.resolve import machine_threads, resolve_settings
    from sepo_ray.tasks import get_task

    s = resolve_settings(get_task("toy"))
    assert (
        s["torch_threads"] == machine_threads() >= 1 and "this machine's CPUs" in s.sources["torch_threads"]
    )
    assert resolve_settings(get_task("toy"), cli={"torch_threads": 1})["torch_threads"] == 1


def test_dna_roles_never_mix(monkeypatch):
    """Selection reads the fine-tuning oracle and the validation chromosome; the evaluation reads another oracle,
    ATAC from rows and a model family the guard never shared, and a generator that never saw the test rows."""
    import json

    from sepo_ray.tasks import get_task
    from sepo_ray.tasks.dna import oracles
    from sepo_ray.tasks.dna.data import HEPG2, load_dhs
    from sepo_ray.tasks.dna.metrics import reference_stats
    from sepo_ray.tasks.dna.models import denoiser_file

    task = get_task("dna")
    monkeypatch.setattr(oracles.EvalOracle, "__init__", lambda *a, **k: pytest.fail("evaluation oracle read"))
    seqs = [s for s in load_dhs().sequences[:64]]
    figures = task.validation(seqs)
    assert set(figures) == {"validation_score", "validation_realism"}
    assert figures["validation_score"] == pytest.approx(float(np.median(oracles.FTOracle()(seqs))))
    data = load_dhs()
    chr2 = data.split("validation")
    assert reference_stats("validation")["num_sequences"] == int((data.cell_type[chr2] == HEPG2).sum())
    assert reference_stats("test")["num_sequences"] == 958  # the HepG2 DHS of chr1
    card = lambda name: json.loads(oracles.artifact_path(name).with_suffix(".json").read_text())  # noqa: E731
    atac, guard = card(oracles.ATAC_ARTIFACT), card("ft_accessibility")
    assert atac["class"] != guard["class"]
    assert not set(atac["data"]["train_chromosomes"]) & set(guard["data"]["train_chromosomes"])
    assert denoiser_file("pretrained").name == "generator_v2.safetensors"
    gen = card("generator_v2")
    from dataclasses import asdict

    from sepo_ray.tasks.dna.pretrain import CONFIGS

    assert gen["train_config"] == json.loads(
        json.dumps(asdict(CONFIGS["generator_v2"]))
    )  # `pretrain` rebuilds it
    assert gen["data"]["rows"] == "train_all" and gen["data"]["num_train"] == len(data.split("train_all"))


def test_shipped_sweeps_train_with_the_tuning_seed_and_select_on_validation():
    from pathlib import Path

    import yaml

    from sepo_ray.protocol import TUNING_SEED

    files = sorted((Path(__file__).resolve().parents[1] / "tune_configs").glob("*.yaml"))
    assert files
    for path in files:
        raw = yaml.safe_load(path.read_text())
        assert raw["base_config"]["seed"] == TUNING_SEED, path.name
        assert raw["select_metric"] == "sepo/validation_score", path.name
        assert "sepo/validation_realism" in raw.get("select_min", {}), path.name
