"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tests use tiny tensors: on a busy machine torch's intra-op threads wait on each other and
    # make them 10-100x slower, while one thread loses nothing.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
