"""Shared fixtures: a real fake-OpenAI server on loopback, one Prefect test harness per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from personaloom.runtime.prefect_env import apply_prefect_defaults
from personaloom.testing.fake_openai import FakeOpenAI

apply_prefect_defaults()  # offline and quiet, before anything imports Prefect


@pytest.fixture(autouse=True)
def _no_ambient_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach a real endpoint by accident through the developer's environment."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(latency=0.0) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect test server for the whole session (it costs 10–16 s to start here)."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        # `personaloom` subprocesses talk to this server too, as after `personaloom server`: each
        # would otherwise start its own (12–22 s) — and the tests cover the documented fast path
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()
        try:
            yield
        finally:
            os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "output"
