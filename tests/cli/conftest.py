"""CLI tests train and sample tiny models: one intra-op thread is as fast, and robust on shared CPU cores."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
