"""Shared test configuration: the S3 server fixture, GPU skipping and test isolation."""

import os

import pytest
import torch

pytest_plugins = ["s3_server"]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch):
    """Unit tests run as one process: hide launcher variables the shell may have set."""
    for key in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_USE_AGENT_STORE",
    ):
        if key in os.environ:
            monkeypatch.delenv(key)
