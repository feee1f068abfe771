"""Gradient-fidelity machinery of `python -m sepo_ray.bench --only fidelity`, checked against exact answers."""

import copy

import pytest
import torch

from sepo_ray import benchmarks as bench
from sepo_ray.cli.bench import run_benchmarks
from sepo_ray.diffusion import Sample, sample
from sepo_ray.sepo import leave_one_out_advantages
from sepo_ray.sepo.toy import ExactToy, encode

CFG = {**bench.FIDELITY_DEFAULTS, "pretrain_iters": 30, "length": 3, "steps": 3}


@pytest.fixture(scope="module")
def setup():
    model, rewards = bench.make_fidelity_toy(0, CFG)
    old = copy.deepcopy(model)
    return model, old, rewards, ExactToy(model, CFG["steps"]), ExactToy(old, CFG["steps"])


def cosine_expected(name, setup):
    """Cosine of an estimator's expectation over x ~ pi (x enumerated) with the exact gradient, on-policy."""
    model, old, rewards, toy, toy_old = setup
    pi = toy_old.pi().detach()
    everything = Sample(x=toy_old.clean, log_prob=torch.zeros(len(pi), dtype=torch.float64))
    adv = len(pi) * pi * (rewards - (pi * rewards).sum())
    params = list(model.parameters())
    exact = bench.flat_grad((toy.pi() * rewards).sum(), params)
    gen = torch.Generator().manual_seed(0)
    est = bench.estimator_gradient(name, model, old, toy, toy_old, everything, adv, CFG, gen)
    return bench.cosine(est, exact)


@pytest.mark.parametrize("offpolicy", [False, True])
def test_exact_identity_through_the_bench(offpolicy):
    model, rewards = bench.make_fidelity_toy(1, CFG, pretrained=False)
    assert bench.exact_identity_rel_err(model, rewards, 3, offpolicy=offpolicy, corrector_steps=1) <= 1e-5


def test_every_neighbour_estimator_is_exact_in_expectation(setup):
    assert cosine_expected("exact_ratio/exact_pi/every", setup) > 1 - 1e-9


def test_hamming_restriction_is_biased(setup):
    """Restricting Thm 3.1's sum to Hamming-1 neighbours loses exactness even with exact ratios and pi."""
    cos = cosine_expected("exact_ratio/exact_pi/all", setup)
    assert 0.0 < cos < 0.999


def test_reinforce_traj_converges_with_many_samples(setup):
    model, old, rewards, toy, toy_old = setup
    batch = sample(
        old, 3000, CFG["length"], CFG["steps"], generator=torch.Generator().manual_seed(0), record_path=True
    )
    adv = leave_one_out_advantages(rewards[encode(batch.x, CFG["num_tokens"])])
    params = list(model.parameters())
    exact = bench.flat_grad((toy.pi() * rewards).sum(), params)
    est = bench.estimator_gradient("reinforce_traj", model, old, toy, toy_old, batch, adv, CFG, None)
    assert bench.cosine(est, exact) > 0.95


def test_run_fidelity_table_shape():
    cfg = {"pretrain_iters": 5, "batch": 4, "length": 3, "steps": 2}
    out = bench.run_fidelity(seeds=1, cfg=cfg)
    assert out["exact_identity_max_rel_err"] <= 1e-5
    rows = bench.estimator_rows(cfg)
    assert set(out["fidelity"]) == set(rows) == set(out["fidelity_offpolicy"])
    assert "conditional/snis4/all" in rows and "clean/none/k2" in rows and "reinforce_traj" in rows
    for table in ("fidelity", "fidelity_offpolicy", "fidelity_expected"):
        for value in out[table].values():
            assert -1.0 <= value["mean"] <= 1.0 and value["sem"] >= 0.0


def test_bench_cli_rejects_unknown_names():
    with pytest.raises(ValueError, match="--only"):
        run_benchmarks(["--only", "no_such_benchmark"])
    assert "fidelity" in bench.BENCHMARKS
    info = bench.machine_info()
    assert {"cpu", "cores", "torch", "gpu"} <= set(info)
