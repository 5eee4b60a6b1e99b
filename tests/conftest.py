"""Shared fixtures: small simulations, event lists, and a real broker per test session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from connectors.simulator import SimulatorConfig, simulate  # noqa: E402
from dataflows.runtime import tune_gc  # noqa: E402

# The collector thresholds a flow process runs with (decision 0023): the in-process flows and
# loops of the tests run next to every session and module fixture's events and scores, which
# the default thresholds walk again and again (a two-worker flow of the small stream took twice
# the CPU time with them; decision 0047). No test result depends on when garbage is collected.
tune_gc()

# A reduced configuration that still shows all three fraud scenarios within seconds.
SMALL = SimulatorConfig(customers=600, terminals=1_200, days=45, seed=7)


@pytest.fixture(scope="session")
def small_config() -> SimulatorConfig:
    return SMALL


@pytest.fixture(scope="session")
def small_stream() -> tuple[list, dict]:
    """(events in event-time order, tx_id -> ground truth) for the small configuration."""
    truth: dict = {}
    events = list(simulate(SMALL, truth=truth))
    return events, truth


@pytest.fixture(scope="session")
def small_sequential(small_stream) -> list:
    """The bare loop (``SequentialPipeline()``, default configuration) over the small stream:
    every transaction's Scored, in order. Computed once for the tests that need this same run."""
    from learners.pipeline import SequentialPipeline

    events, _ = small_stream
    return list(SequentialPipeline().run(events))


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A tansu broker on a free loopback port for the whole session."""
    from connectors.broker import LocalBroker

    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    b = LocalBroker(log_path=str(log)).start()
    yield b
    b.stop()


@pytest.fixture
def clean_env(monkeypatch):
    """No FRAUDFLOW_* variables from the caller's shell leak into a test."""
    for key in list(os.environ):
        if key.startswith("FRAUDFLOW_") or key.startswith("BYTEWAX_"):
            monkeypatch.delenv(key, raising=False)
    return monkeypatch
