"""An experiment run in parts and merged (``sepo-ray frontier TASK --merge A,B --output C``) reports exactly what
the whole experiment reports: rows joined seed by seed, winners recomputed, every disagreement refused."""

import json

import numpy as np
import pytest

from sepo_ray.cli.compare import frontier_main
from sepo_ray.experiment.merge import merge_reports
from sepo_ray.protocol import protocol_record, seed_summary, winners_by_designs

METRICS = ("pred_activity_median", "atac_acc", "kmer3_corr", "log_lik_median", "motif_enrichment")
SEEDS = [0, 1, 2, 3]
ALL = ("pretrained", "best_of_n", "sepo_t")


def _row(name, method, budget, values_by_seed, seeds, **extra):
    trains = method in ("sepo_t", "trajectory")
    cost = {"train": budget, "per_design": 0} if trains else {"train": 0, "per_design": budget}
    return {
        "name": name, "entry": method, "method": method, "budget_calls": budget,
        "calls": {"fine_tuning": budget if trains else 0, "selection": 0 if trains else budget},
        "config": {"kl_alpha": 0.25} if trains else {}, "cost": cost, "tuning_calls": 5120 if trains else 0,
        "metrics": {m: seed_summary([values_by_seed[m][s] for s in seeds]) for m in METRICS},
        "seeds": list(seeds), "sequences_per_seed": 128, **extra,
    }  # fmt: skip


def _whole(seeds=SEEDS, methods=ALL):
    """A frontier report over ``seeds`` with per-seed values drawn once (the same numbers for any seed subset)."""
    rows = []
    for method in methods:
        for budget in [0] if method == "pretrained" else [512, 1024]:
            rng = np.random.default_rng([ALL.index(method), budget])  # the same numbers in any part
            v = {m: {s: float(rng.normal(0.0, 0.3)) for s in SEEDS} for m in METRICS}
            v["kmer3_corr"] = {s: 0.95 + 0.01 * s for s in SEEDS}  # every row passes the realism floor
            name = method if budget == 0 else f"{method}@{budget}"
            extra = {}
            if method == "sepo_t":
                kl = {s: 1.0 + s for s in SEEDS}
                extra = {
                    "iterations": budget // 32,
                    "kl": sum(kl[s] for s in seeds) / len(seeds),
                    "train_seconds": {str(s): 10.0 * (s + 1) for s in seeds},
                }
            rows.append(_row(name, method, budget, v, seeds, **extra))
    rows.sort(
        key=lambda r: (r["budget_calls"], r["method"] != "sepo_t")
    )  # the engine's order: fine-tuned first
    charged = {m: 5120 if m == "sepo_t" else 0 for m in methods}
    return {
        "protocol": protocol_record("validation signal", METRICS, [1000], seeds, charged, [64, 640], 5, 2, 2048),
        "task": "dna", "budgets": [512, 1024], "design_size": 64, "design_batches": 2, "seeds": list(seeds),
        "steps": 32, "reward": "dna_ft", "score_metric": METRICS[0], "realism_metric": "kmer3_corr",
        "realism_min": 0.9,
        "tuning": {"sepo_t": {"calls": 5120, "config": {"kl_alpha": 0.25}, "source": "tune"}} if "sepo_t" in methods else {},
        "rows": rows, "references": [],
        "winners_by_designs": winners_by_designs(rows, [64, 640], METRICS[0], "kmer3_corr", 0.9),
    }  # fmt: skip


_part = _whole  # a part: the same experiment over some of the seeds or some of the methods


def _close(a, b):
    """Equal reports up to float rounding (a mean over joined values may differ in the last bit)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    else:
        assert a == b


def test_parts_by_seed_merge_to_the_whole_report():
    whole = _whole()
    methods = ("pretrained", "best_of_n", "sepo_t")
    merged = merge_reports([_part([0, 2], methods), _part([1, 3], methods)])
    _close(merged, whole)
    sepo = next(r for r in merged["rows"] if r["name"] == "sepo_t@512")
    assert sepo["seeds"] == [0, 1, 2, 3]
    assert sepo["kl"] == pytest.approx(2.5)  # the mean of 1, 2, 3, 4 over the four seeds
    assert sepo["train_seconds"] == {"0": 10.0, "2": 30.0, "1": 20.0, "3": 40.0}
    assert merged["protocol"]["report_seeds"] == [0, 1, 2, 3] and merged["protocol"]["exploratory"]


def test_parts_by_method_merge_to_the_whole_report():
    whole = _whole()
    merged = merge_reports([_part(SEEDS, ("pretrained", "best_of_n")), _part(SEEDS, ("sepo_t",))])
    _close(merged, whole)
    assert merged["protocol"]["tuning_calls"] == {"pretrained": 0, "best_of_n": 0, "sepo_t": 5120}
    names = ["pretrained", "sepo_t@512", "best_of_n@512", "sepo_t@1024", "best_of_n@1024"]
    assert [r["name"] for r in merged["rows"]] == names  # the engine's order, whichever part came first


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.update(design_batches=5), "differ in design_batches"),
        (lambda b: b["protocol"].update(tuned_horizon_calls=8192), "protocol tuned_horizon_calls"),
        (
            lambda b: b["tuning"]["sepo_t"].update(config={"kl_alpha": 1.0}),
            "disagree on the tuning of 'sepo_t'",
        ),
        (lambda b: b["rows"][-1]["config"].update(lr=1e-3), "differs between the parts in config"),
        (lambda b: b["rows"][-1]["metrics"][METRICS[0]].pop("values"), "no per-seed values"),
        (lambda b: next(r for r in b["rows"] if "kl" in r).pop("kl"), "a KL in one part only"),
    ],
)
def test_disagreeing_parts_are_refused(change, message):
    a, b = (
        _part([0, 2], ("pretrained", "best_of_n", "sepo_t")),
        _part([1, 3], ("pretrained", "best_of_n", "sepo_t")),
    )
    change(b)
    with pytest.raises(ValueError, match=message):
        merge_reports([a, b])


def test_overlapping_or_unpaired_seeds_are_refused():
    methods = ("pretrained", "best_of_n", "sepo_t")
    with pytest.raises(ValueError, match=r"seeds \[2\] in two parts"):
        merge_reports([_part([0, 2], methods), _part([1, 2], methods)])
    # sepo_t reaches seeds 0-3, pretrained and best-of-N only 0 and 1: the rows would not pair
    with pytest.raises(
        ValueError, match=r"row pretrained has seeds \[0, 1\], the others reach \[0, 1, 2, 3\]"
    ):
        merge_reports([_part([0, 1], ("pretrained", "best_of_n", "sepo_t")), _part([2, 3], ("sepo_t",))])
    with pytest.raises(ValueError, match="at least two"):
        merge_reports([_part(SEEDS, methods)])


def _write(folder, report):
    folder.mkdir(parents=True)
    (folder / "comparison.json").write_text(json.dumps(report))
    return folder


def test_merge_command_writes_the_report_and_refuses_bad_folders(tmp_path, capsys):
    methods = ("pretrained", "best_of_n", "sepo_t")
    a, b = _write(tmp_path / "a", _part([0, 2], methods)), _write(tmp_path / "b", _part([1, 3], methods))
    out = tmp_path / "merged"
    assert frontier_main(["dna", "--merge", f"{a},{b}", "--output", str(out)]) == 0
    report = json.loads((out / "comparison.json").read_text())
    _close({k: v for k, v in report.items() if k != "merged_from"}, json.loads(json.dumps(_whole())))
    assert report["merged_from"][1] == {"folder": str(b), "rows": [r["name"] for r in _part([1], methods)["rows"]],
                                        "seeds": [1, 3]}  # fmt: skip
    table = (out / "table.md").read_text()
    assert "seeds [0, 1, 2, 3]" in table and "sepo_t@1024" in table and (out / "frontier.png").is_file()
    before = (a / "comparison.json").read_bytes()
    # a merge again into its own folder is allowed (it rewrites the merge); into a part or an experiment is not
    assert frontier_main(["dna", "--merge", f"{a},{b}", "--output", str(out)]) == 0
    capsys.readouterr()
    assert frontier_main(["dna", "--merge", f"{a},{b}", "--output", str(a)]) == 2
    assert "is one of the parts" in capsys.readouterr().err
    assert (a / "comparison.json").read_bytes() == before
    assert (
        frontier_main(["dna", "--merge", f"{a},{tmp_path / 'missing'}", "--output", str(tmp_path / "m2")])
        == 2
    )
    assert "has no comparison.json" in capsys.readouterr().err
    assert (
        frontier_main(["dna", "--merge", f"{a},{b}", "--output", str(tmp_path / "m3"), "--seeds", "0"]) == 2
    )
    err = capsys.readouterr().err
    assert (
        "--merge takes only TASK and --output" in err
        and "--seeds" in err
        and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "m3").exists()
    (tmp_path / "unfinished" / "rows").mkdir(parents=True)  # an experiment under way, no report yet
    assert frontier_main(["dna", "--merge", f"{a},{b}", "--output", str(tmp_path / "unfinished")]) == 2
    assert "holds an experiment of its own" in capsys.readouterr().err
    assert not (tmp_path / "unfinished" / "comparison.json").exists()
    assert frontier_main(["toy", "--merge", f"{a},{b}", "--output", str(tmp_path / "m4")]) == 2
    assert "not 'toy'" in capsys.readouterr().err


def test_the_shipped_8k_frontier_split_by_method_merges_back_to_itself():
    """The shipped report (real rows, train_seconds, KL, winners) as a best-of-N part and a sepo_t part."""
    from pathlib import Path

    shipped = json.loads(
        (Path(__file__).parents[1] / "docs/results/protocol/frontier_8k/comparison.json").read_text()
    )
    selection = {**shipped, "rows": [r for r in shipped["rows"] if r["method"] != "sepo_t"], "tuning": {}}
    selection["protocol"] = {**shipped["protocol"], "tuning_calls": {"pretrained": 0, "best_of_n": 0}}
    finetuned = {**shipped, "rows": [r for r in shipped["rows"] if r["method"] == "sepo_t"]}
    merged = merge_reports([selection, finetuned])
    assert json.dumps(merged, sort_keys=True) == json.dumps(shipped, sort_keys=True)


def _one_budget(report):
    return {**report, "budgets": [512], "rows": [r for r in report["rows"] if r["budget_calls"] in (0, 512)]}


def test_a_merge_into_an_earlier_merge_leaves_none_of_its_files_behind(tmp_path):
    """frontier.png of an earlier two-budget merge goes when the new merge has one budget; a user's file stays."""
    methods = ("pretrained", "best_of_n", "sepo_t")
    a, b = _write(tmp_path / "a", _part([0, 2], methods)), _write(tmp_path / "b", _part([1, 3], methods))
    out = tmp_path / "merged"
    assert frontier_main(["dna", "--merge", f"{a},{b}", "--output", str(out)]) == 0
    assert (out / "frontier.png").is_file()
    (out / "notes.md").write_text("mine")
    c = _write(tmp_path / "c", _one_budget(_part([0, 2], methods)))
    d = _write(tmp_path / "d", _one_budget(_part([1, 3], methods)))
    assert frontier_main(["dna", "--merge", f"{c},{d}", "--output", str(out)]) == 0
    report = json.loads((out / "comparison.json").read_text())
    assert report["budgets"] == [512] and [m["folder"] for m in report["merged_from"]] == [str(c), str(d)]
    assert not (out / "frontier.png").exists() and (out / "notes.md").read_text() == "mine"
    assert (out / "table.md").is_file() and (out / "metrics.json").is_file()


def test_the_shipped_8k_frontier_with_trajectory_is_the_merge_of_its_shipped_parts():
    """frontier_8k_all = frontier_8k (pretrained, best-of-N, sepo_t) + trajectory run as one part per seed."""
    from pathlib import Path

    root = Path(__file__).parents[1] / "docs/results/protocol"
    shipped = json.loads((root / "frontier_8k_all/comparison.json").read_text())
    folders = [m["folder"] for m in shipped.pop("merged_from")]
    assert folders == ["docs/results/protocol/frontier_8k"] + [
        f"docs/results/protocol/frontier_8k_trajectory/seed{s}" for s in (0, 1, 2)
    ]
    parts = [json.loads((root.parents[2] / f / "comparison.json").read_text()) for f in folders]
    assert json.dumps(merge_reports(parts), sort_keys=True) == json.dumps(shipped, sort_keys=True)
    assert {r["method"] for r in shipped["rows"] if r["budget_calls"] == 8192} == {
        "best_of_n",
        "sepo_t",
        "trajectory",
    }
    assert all(r["seeds"] == [0, 1, 2] for r in shipped["rows"])
