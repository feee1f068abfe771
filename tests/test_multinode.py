"""Scaling out, simulated: a local multi-node Ray cluster (``ray.cluster_utils.Cluster``), work placed by resource,
weights reaching every rollout worker, and a worker node lost mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_run_on_three_nodes_places_its_work_and_survives_losing_a_worker_node(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode_run.py")], capture_output=True, text=True,
                         timeout=900, cwd=tmp_path, env=env)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    nodes = out["nodes"]
    assert (
        set(out["runners"]) <= set(nodes["workers"]) and len(out["runners"]) == 2
    )  # runners on worker nodes
    assert out["oracles"] == [nodes["oracle"]]  # the oracle actor on the node that offers `oracle`
    assert out["learner"] == nodes["head"]  # num_learners = 0: learning happens in the driver, on the head
    assert out["finite"] and len(out["history"]) == 3  # every iteration finished
    lost = out["history"][-1]["async_lost_in_flight"]
    assert lost >= 2, out["history"]  # the lost runner's sample in flight was counted (2 prompts x 2 / 2)
    assert all(h["async_missed_broadcasts"] == 0 for h in out["history"])
    survivor = set(nodes["workers"]) - set(out["runners"][:1])
    assert (
        set(out["runners_after"]) <= survivor and len(out["runners_after"]) == 2
    )  # restarted on the survivor
    assert out["weights"]["runners"] and min(out["weights"]["runners"]) >= out["weights"]["learner"]
