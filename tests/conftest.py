"""Test-wide settings: CPU DeepSpeed, one thread per rank, shared caches, ../shared data."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One warm cache for DeepSpeed's JIT-compiled ops and the tiny model, shared by every test and
# every spawned rank (the first build of the shm comm op costs 20-35 s; later ones nothing).
_CACHE = pathlib.Path(os.environ.get("COIN_TEST_CACHE", REPO / ".cache"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_CACHE / "torch_extensions"))
os.environ.setdefault("COIN_CACHE", str(_CACHE / "coin"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data, present in the team's checkouts and CI; absent from a user's clone."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"needs the team's shared data at {path} (not part of a user's clone)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """The embedded tiny LLaMA as a HF directory (built once into the shared cache)."""
    from coin.training.config import TinyModelConfig
    from coin.training.model import tiny_model_dir as build

    return build(TinyModelConfig())


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory):
    """One uninterrupted 2-rank ZeRO-3 training run on the tiny model, shared by the training-run
    tests (resume, preemption, export, TensorBoard): see tests/training/trainer_helpers.py."""
    from trainer_helpers import straight_run as run

    return run(tmp_path_factory)
