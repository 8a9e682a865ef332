import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The 2-D models here are tiny: one thread is fastest, and more threads on busy cores
    were up to 40x slower. Restored afterwards (run() also sets it from cfg.threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
