"""Test-session settings for lesion-inpaint's own tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Tiny CPU models run fastest single-threaded on a shared machine (OpenMP spin contention makes
    2 threads 10x slower under load). Restored after each module; the library never sets this."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
