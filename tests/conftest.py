"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: extra threads only add contention on a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
