"""Shared fixtures: one local Ray runtime for the whole test session (2 CPUs, no dashboard)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

try:  # one intra-op thread: the tests run Ray actors beside the driver on 2 cores (no oversubscription)
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray runtime shared by every test that needs one; shut down at the end of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            runtime_env={
                "env_vars": {
                    "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0",
                    # so that reward actors can import test-only rewards (tests.rewards_for_tests)
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
                    ),
                }
            },
        )
    yield ray
    ray.shutdown()
