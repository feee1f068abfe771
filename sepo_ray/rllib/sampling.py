"""Sampling for the learner: the synchronous loop (:func:`sample_sync`, ``max_staleness`` 0) and the asynchronous
actor-learner loop (:class:`AsyncSampler`, ``max_staleness`` k > 0), where rollout workers and reward oracles
keep working while the learner updates.

Every remote EnvRunner always has one sampling request in flight and samples with the weights it holds. Each
episode carries the version of those weights (RLlib's ``weights_seq_no``: the learner's count of updates when
they were broadcast). The learner takes whole batches from the queue of finished samples, oldest first, and
drops those more than k versions behind its own (counted, never silently); the lag of the rest is corrected by
the ratio the loss already computes (old log-probabilities recorded at sampling time, PPO clip). After each
update the new weights go to every runner as a request queued behind its current sample; each runner answers
with the version it then holds, so a runner that missed an update is detected and reported. k = 0 is the
synchronous loop (``SEPO.training_step`` samples, then updates).

The pattern is RLlib's IMPALA / APPO ``training_step`` (asynchronous requests, a weight broadcast that queues
behind sampling), reduced to one queue with a staleness bound.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import ray
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

logger = logging.getLogger(__name__)

SAMPLE, WEIGHTS = "sepo_sample", "sepo_weights"


def sample_sync(algo, wanted: int) -> list:
    """``wanted`` whole sequences from the rollout workers, all with the current weights; a crashed worker is
    restored and sampling goes on."""
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS

    episodes = []
    for attempt in range(4):
        got, runner_results = synchronous_parallel_sample(
            worker_set=algo.env_runner_group,
            max_env_steps=wanted - len(episodes),
            sample_timeout_s=algo.config.sample_timeout_s,
            _uses_new_env_runners=True,
            _return_metrics=True,
        )
        episodes += [e for e in got if len(e) > 0]
        algo.metrics.aggregate(runner_results, key=ENV_RUNNER_RESULTS)
        if len(episodes) >= wanted:
            return episodes
        logger.warning("SEPO: sampled %d/%d sequences; restoring rollout workers", len(episodes), wanted)
        time.sleep(1.0 + attempt)  # give Ray time to restart a crashed worker
        algo.restore_env_runners(algo.env_runner_group)
    if not episodes:
        raise RuntimeError("SEPO: every rollout worker failed to sample, four times in a row")
    return episodes


# Module-level (they travel to the runners; they must not capture the Algorithm).
def sample_batch(runner) -> tuple[list, dict]:
    """One sample() call on a runner: its finished episodes (each with its weights version) and its metrics."""
    episodes = [e for e in runner.sample() if len(e) > 0]
    return episodes, runner.get_metrics()


def apply_weights(runner, state) -> int:
    """Set the broadcast weights on a runner; -> the weights version it holds afterwards."""
    runner.set_state(state)
    return int(getattr(runner, "_weights_seq_no", 0))


def episode_version(episode) -> int:
    """The version of the weights that generated ``episode`` (0 before any update)."""
    return int(episode.get_extra_model_outputs(WEIGHTS_SEQ_NO, -1))


class AsyncSampler:
    """Keeps the remote runners sampling; hands out batches of finished episodes at most ``max_staleness``
    versions old. ``stats()`` says what happened: batches dropped as too stale, broadcasts missed, the
    staleness of what was used."""

    def __init__(self, algo, max_staleness: int, timeout_s: float):
        self.algo, self.k, self.timeout_s = algo, int(max_staleness), float(timeout_s)
        self.queue: deque = deque()  # (version, episodes) of finished sample() calls, in arrival order
        self.version = 0  # the learner's weights version the runners should hold
        self.sent: dict[int, int] = {}  # runner id -> the last version sent to it
        self.held: dict[int, int] = {}  # runner id -> the version it acknowledged last
        self.dropped = self.missed = self.lost = 0
        self.lost_from: set[int] = set()  # runners whose lost sample is counted already
        self.used_staleness: list[int] = []

    @property
    def group(self):
        return self.algo.env_runner_group

    def _request(self) -> None:
        """A sampling request on every healthy runner that has none in flight (a runner holds at most one)."""
        manager = self.group._worker_manager  # RLlib's FaultTolerantActorManager: it counts requests per tag
        idle = [
            i for i in self.group.healthy_worker_ids()
            if manager._remote_actor_states[i].get_num_in_flight_requests(SAMPLE) == 0
        ]  # fmt: skip
        if idle:
            self.group.foreach_env_runner_async(sample_batch, tag=SAMPLE, remote_worker_ids=idle)

    def collect(self, wanted: int) -> list:
        """``wanted`` episodes (whole sample() batches), fresh enough; waits for runners as needed."""
        deadline = time.monotonic() + self.timeout_s
        while self._queued() < wanted:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"SEPO: no {wanted} fresh samples within {self.timeout_s:g} s (sample_timeout_s)"
                )
            self.poll()
        batch = []
        while len(batch) < wanted:
            version, episodes = self.queue.popleft()
            self.used_staleness += [self.version - version] * len(episodes)
            batch += episodes
        return batch

    def poll(self, timeout_s: float = 0.5) -> None:
        """One round: restore dead runners, keep every runner sampling, take in what is ready (finished samples
        into the queue, broadcast acknowledgements checked), count samples lost with a runner, drop stale ones."""
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS

        if len(self.group.healthy_worker_ids()) < self.group.num_remote_workers():
            self.algo.restore_env_runners(self.group)  # a runner (or its node) died: Ray restarts it
        self._request()
        sampling = set(self._sampling())
        results = self.group.fetch_ready_async_reqs(tags=[SAMPLE, WEIGHTS], timeout_seconds=timeout_s)
        self._count_lost(sampling - {i for i, _ in results})
        for runner_id, out in results:
            if isinstance(out, int):  # a broadcast's acknowledgement: the version the runner now holds
                self.held[runner_id] = out
                if out < self.sent.get(runner_id, 0):
                    self.missed += 1
                    logger.warning("SEPO: rollout worker %d holds weights %d, sent %d", runner_id, out,
                                   self.sent[runner_id])  # fmt: skip
                continue
            episodes, metrics = out
            self.algo.metrics.aggregate([metrics], key=ENV_RUNNER_RESULTS)
            if episodes:
                self.queue.append((min(episode_version(e) for e in episodes), episodes))
        self._drop_stale()

    def _sampling(self) -> list[int]:
        """The runners with a sampling request in flight."""
        states = self.group._worker_manager._remote_actor_states
        return [i for i, state in states.items() if state.get_num_in_flight_requests(SAMPLE) > 0]

    def _count_lost(self, candidates: set[int]) -> None:
        """Runners that had a sample in flight and are no longer healthy lost it: counted, logged, and sampled
        again by the restored runner (never silently)."""
        healthy = set(self.group.healthy_worker_ids())
        for runner_id in candidates - healthy:
            if runner_id not in self.lost_from:
                self.lost_from.add(runner_id)
                self.lost += int(self.algo.config.num_envs_per_env_runner)
                logger.warning("SEPO: rollout worker %d died with a sample in flight: %d sequences regenerated",
                               runner_id, int(self.algo.config.num_envs_per_env_runner))  # fmt: skip
        self.lost_from -= healthy

    def _queued(self) -> int:
        return sum(len(e) for _, e in self.queue)

    def _drop_stale(self) -> None:
        fresh = deque((v, e) for v, e in self.queue if self.version - v <= self.k)
        self.dropped += sum(len(e) for v, e in self.queue if self.version - v > self.k)
        self.queue = fresh

    def broadcast(self) -> None:
        """Send the learner's weights (its version: updates so far) to every runner, behind its sample in flight."""
        state = self.algo.learner_group.get_state(
            components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}", inference_only=True
        )[COMPONENT_LEARNER]
        version = int(state[WEIGHTS_SEQ_NO])
        state = {COMPONENT_RL_MODULE: state[COMPONENT_RL_MODULE], WEIGHTS_SEQ_NO: version}
        ref = ray.put(state)
        ids = self.group.healthy_worker_ids()
        self.group.foreach_env_runner_async(
            apply_weights, tag=WEIGHTS, kwargs={"state": ref}, remote_worker_ids=ids
        )
        self.sent.update(dict.fromkeys(ids, int(version)))
        self.version = int(version)
        self._drop_stale()

    def stats(self) -> dict[str, float]:
        """Sequences dropped as too stale, broadcasts a runner missed, and the mean staleness of the sequences used
        since the last call (0 = as fresh as the synchronous loop)."""
        used = self.used_staleness
        self.used_staleness = []
        return {
            "async_dropped_stale": float(self.dropped),
            "async_missed_broadcasts": float(self.missed),
            "async_lost_in_flight": float(self.lost),
            "async_staleness_mean": float(sum(used) / len(used)) if used else 0.0,
            "async_queued": float(self._queued()),
        }

    def pending(self) -> int:
        """Sequences finished or in flight that no update has used yet (what a checkpoint cannot keep)."""
        in_flight = self.group.num_in_flight_async_reqs(tag=SAMPLE)
        return self._queued() + in_flight * int(self.algo.config.num_envs_per_env_runner)
