"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests' matrices are tiny: extra OpenMP threads only add contention (on a shared 2-core box, SVDs
    ran 100x slower with two threads than with one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
