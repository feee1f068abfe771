"""The asynchronous actor-learner loop: versions, the staleness bound, nothing lost or used twice, resume."""

from __future__ import annotations

import json

import pytest

from sepo_ray.rllib.sampling import SAMPLE, WEIGHTS, AsyncSampler

SMALL = ["--set", "prompts_per_batch=2", "--set", "group_size=4", "--set", "denoise_steps=4"]


class FakeEpisode:
    def __init__(self, uid: int, version: int):
        self.uid, self.version = uid, version

    def __len__(self):
        return 1

    def get_extra_model_outputs(self, key, index):
        return self.version


class FakeStates:
    def __init__(self, group):
        self.group = group

    def __getitem__(self, runner_id):
        group = self.group

        class State:
            @staticmethod
            def get_num_in_flight_requests(tag):
                return sum(1 for r, t in group.in_flight if r == runner_id and t == tag)

        return State()

    def items(self):
        return [(i, self[i]) for i in (1, 2)]


class FakeGroup:
    """Two runners; a runner's sample request finishes when ``finish`` says so, with the weights it holds."""

    def __init__(self):
        self.in_flight, self.ready, self.held, self.uid = [], [], {1: 0, 2: 0}, 0
        self._worker_manager = type("M", (), {"_remote_actor_states": FakeStates(self)})()

    def healthy_worker_ids(self):
        return [1, 2]

    def num_healthy_remote_workers(self):
        return 2

    def num_remote_workers(self):
        return 2

    def num_in_flight_async_reqs(self, tag=None):
        return sum(1 for _, t in self.in_flight if t == tag)

    def foreach_env_runner_async(self, func, tag=None, kwargs=None, remote_worker_ids=None):
        for runner_id in remote_worker_ids:
            if tag == WEIGHTS:
                self.held[runner_id] = kwargs["state"]["version"]
                self.ready.append((runner_id, self.held[runner_id]))
            else:
                self.in_flight.append((runner_id, tag))

    def finish(self, runner_id: int, n: int = 4):
        self.in_flight.remove((runner_id, SAMPLE))
        episodes = []
        for _ in range(n):
            self.uid += 1
            episodes.append(FakeEpisode(self.uid, self.held[runner_id]))
        self.ready.append((runner_id, (episodes, {})))

    def fetch_ready_async_reqs(self, tags=None, timeout_seconds=0.0):
        if not self.ready:  # nothing ready: the first runner in flight finishes (a sampler takes time)
            self.finish(self.in_flight[0][0])
        out, self.ready = self.ready, []
        return out


class FakeAlgo:
    def __init__(self):
        self.env_runner_group = FakeGroup()
        self.metrics = type("Metrics", (), {"aggregate": lambda *a, **k: None})()
        self.config = type("Config", (), {"num_envs_per_env_runner": 4})()
        self.version = 0
        algo = self

        class Learners:
            @staticmethod
            def get_state(components=None, inference_only=False):
                return {"learner": {"rl_module": {}, "weights_seq_no": algo.version}}

        self.learner_group = Learners()


@pytest.fixture
def sampler(monkeypatch):
    import sepo_ray.rllib.sampling as sampling

    monkeypatch.setattr(sampling.ray, "put", lambda state: {"version": state["weights_seq_no"]})
    algo = FakeAlgo()
    return algo, AsyncSampler(algo, max_staleness=1, timeout_s=5.0)


def test_every_sample_is_used_once_and_none_older_than_the_bound(sampler):
    algo, s = sampler
    group, used = algo.env_runner_group, []
    for update in range(1, 7):
        batch = s.collect(8)
        assert len(batch) == 8
        assert all(s.version - e.version <= 1 for e in batch)  # the staleness bound
        used += [e.uid for e in batch]
        algo.version = update
        s.broadcast()
        # a runner finishes the sample it had in flight with the weights it held: one version behind
        for runner_id in {r for r, t in group.in_flight if t == SAMPLE}:
            group.finish(runner_id)
    assert len(used) == len(set(used))  # nothing used twice
    produced = group.uid
    queued = sum(len(e) for _, e in s.queue)
    unfetched = sum(len(out[0]) for _, out in group.ready if not isinstance(out, int))
    stats = s.stats()
    assert produced == len(used) + queued + unfetched + stats["async_dropped_stale"]  # nothing lost
    assert stats["async_missed_broadcasts"] == 0 and group.held == {1: 6, 2: 6}


def test_samples_beyond_the_bound_are_dropped_and_counted(sampler):
    algo, s = sampler
    group = algo.env_runner_group
    s.collect(4)
    for update in (1, 2, 3):  # three updates while runner 2 holds on to an old sample
        algo.version = update
        s.broadcast()
    group.held[2] = 0  # that sample was drawn with version 0
    group.ready.append((2, ([type("E", (), {"__len__": lambda self: 1, "get_extra_model_outputs": lambda self, k, i: 0,
                                             "uid": -1})() for _ in range(4)], {})))  # fmt: skip
    batch = s.collect(4)
    assert all(e.uid != -1 for e in batch)
    assert s.stats()["async_dropped_stale"] >= 4


def test_a_runner_that_missed_a_broadcast_is_reported(sampler):
    algo, s = sampler
    s.collect(4)
    algo.version = 1
    s.broadcast()
    algo.env_runner_group.ready.append((1, 0))  # runner 1 answers that it still holds version 0
    s.collect(4)
    assert s.stats()["async_missed_broadcasts"] == 1


@pytest.mark.slow
def test_an_asynchronous_run_with_a_slow_oracle_resumes_and_says_what_it_regenerated(ray_session, tmp_path):
    from sepo_ray.cli.run import main

    slow = ["--reward", "tests.rewards_for_tests:slow_fraction_a", "--set", "num_env_runners=1",
            "--set", "max_staleness=1", "--no-eval", *SMALL]  # fmt: skip
    out = tmp_path / "r"
    assert main(["toy", "--output", str(out), "--iterations", "2", *slow]) == 0
    record = json.loads((out / "result.json").read_text())
    assert [h["iteration"] for h in record["history"]] == [1, 2]
    for h in record["history"]:
        assert 0 <= h["async_staleness_mean"] <= 1 and h["async_missed_broadcasts"] == 0
    assert record["history"][-1]["oracle_calls"] >= 2 * 8  # every sequence fetched is charged, used or not
    resume = [a for a in slow if a not in ("--reward", "tests.rewards_for_tests:slow_fraction_a")]
    assert main(["toy", "--output", str(out), "--iterations", "3", "--resume", "--no-eval"]) == 0, resume
    record = json.loads((out / "result.json").read_text())
    assert [h["iteration"] for h in record["history"]] == [1, 2, 3]
    (entry,) = record["resumes"]
    assert entry["at_iteration"] == 2 and entry["async_samples_regenerated"] >= 0


def test_the_asynchronous_loop_needs_rollout_workers():
    from sepo_ray.resolve import resolve_settings
    from sepo_ray.tasks import get_task

    with pytest.raises(ValueError, match="max_staleness=1 .*: an asynchronous loop needs rollout workers"):
        resolve_settings(get_task("toy"), cli={"max_staleness": 1})
    assert (
        resolve_settings(get_task("toy"), cli={"max_staleness": 1, "num_env_runners": 1})["max_staleness"]
        == 1
    )
