"""A run on a local multi-node Ray cluster (a head without CPUs, two worker nodes, an oracle node), for
tests/test_multinode.py: prints one JSON line with the placement, the weights each runner holds, and what the
run lost when a worker node went away."""

from __future__ import annotations

import json
import math
import sys
import time

import ray
from ray.cluster_utils import Cluster


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    oracle = cluster.add_node(num_cpus=0, resources={"oracle": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    from sepo_ray.resolve import resolve_settings
    from sepo_ray.rllib import SEPOConfig
    from sepo_ray.tasks import get_task

    settings = resolve_settings(get_task("dna"), cli={
        "num_env_runners": 2, "max_staleness": 1, "oracle_resource": "oracle", "prompts_per_batch": 2,
        "group_size": 2, "denoise_steps": 4, "kl_steps": 2, "trajectory_steps": 2,
        # the oracle answers 2 s late, so the victim's sample is still in flight when its node goes away
        "reward": "sepo_ray.benchmarks.async_bench:dna_reward_2s",
    })  # fmt: skip
    algo = SEPOConfig.from_settings(settings).build_algo()
    out = {"nodes": {"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers],
                     "oracle": oracle.node_id}}  # fmt: skip
    out["runners"] = algo.env_runner_group.foreach_env_runner(
        lambda r: ray.get_runtime_context().get_node_id(), local_env_runner=False
    )
    out["oracles"] = [ray.get(a.node_id.remote()) for a in algo._reward_pool.actors]
    out["learner"] = ray.get_runtime_context().get_node_id()  # num_learners = 0: the learner is the driver's
    history = [algo.train()["sepo"]]
    victim = next(w for w in workers if w.node_id == out["runners"][0])
    cluster.remove_node(victim)  # a worker node goes away mid-run, with its runner's sample in flight
    for _ in range(2):
        history.append(algo.train()["sepo"])
    out["history"] = [{k: float(v) for k, v in h.items() if k.startswith(("reward_", "kl", "async_"))}
                      for h in history]  # fmt: skip
    out["finite"] = all(math.isfinite(h["reward_mean"]) for h in out["history"])
    deadline, held = time.monotonic() + 180, []
    while time.monotonic() < deadline:  # the broadcast queues behind each runner's sample in flight; the lost
        algo._async.poll()  # runner restarts on the surviving worker node (Ray restarts it, RLlib restores it)
        held = algo.env_runner_group.foreach_env_runner(
            lambda r: int(r._weights_seq_no), local_env_runner=False
        )
        if len(held) == 2 and min(held) >= algo._async.version:
            break
        time.sleep(1.0)
    out["weights"] = {"learner": algo._async.version, "runners": held}
    out["runners_after"] = algo.env_runner_group.foreach_env_runner(
        lambda r: ray.get_runtime_context().get_node_id(), local_env_runner=False
    )
    algo.stop()
    print(json.dumps(out), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
