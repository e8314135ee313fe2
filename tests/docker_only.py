"""Fixtures for test modules that run once, on Docker, rather than on every provider: importing `stack` and
`client` from here makes that module's tests (and the `sandbox` fixture they use) take the shared Docker stack
instead of being parametrized over the providers."""

from __future__ import annotations

import pytest

from orchestrator.local_stack import LocalStack
from tests.client import Client


@pytest.fixture
def stack(docker_stack: LocalStack) -> LocalStack:
    return docker_stack


@pytest.fixture
def client(docker_rpc: Client) -> Client:
    return docker_rpc
