import os

import pytest
import torch

os.environ.setdefault("FP_PROGRESS", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def quick_run():
    """One quick-profile synthetic experiment shared by the behavioural tests."""
    from fp_helpers.experiments import run_synthetic, synthetic_config

    return run_synthetic(synthetic_config("quick"), device="cpu", progress=False)
