"""Suite-wide settings that make every test run the same way on every CPU.

The automatic precision is bf16 on CPUs with AMX or AVX512-BF16 and fp32 on the others, so the
suite fixes it: fp32 unless ``SYNTHCT_PRECISION`` asks for another (``SYNTHCT_PRECISION=bf16 make
test`` runs every test that does not pin its own precision in bf16). Subprocesses inherit it.
"""

import os

os.environ.setdefault("SYNTHCT_PRECISION", "fp32")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread (several threads on shared cores spin)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
