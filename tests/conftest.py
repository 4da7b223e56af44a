import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Packed caches and downloads go to a temporary folder, never the user's home."""
    old = os.environ.get("DARKLENS_CACHE")
    os.environ["DARKLENS_CACHE"] = str(tmp_path_factory.mktemp("darklens-cache"))
    yield
    if old is None:
        os.environ.pop("DARKLENS_CACHE", None)
    else:
        os.environ["DARKLENS_CACHE"] = old


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a loaded 2-core machine OpenMP barriers
    make each forward pass up to 50x slower: modules that use this run on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_demo(monkeypatch):
    """``darklens demo`` shrunk to seconds: 32 px, a dozen images, one epoch of a tiny model."""
    import darklens.demo as demo

    monkeypatch.setattr(demo, "DEMO_SIM", {**demo.DEMO_SIM, "image_size": "32"})
    monkeypatch.setattr(demo, "DEMO_COUNTS", {"n_train": 12, "n_val": 4, "n_test": 6})
    monkeypatch.setattr(demo, "DEMO_MODEL", "densenet_cbam_tiny")
    monkeypatch.setattr(demo, "DEMO_TRAIN", {"epochs": 1, "batch": 12})
    monkeypatch.setattr(demo, "PRETRAINED_TEST", {"n_train": 0, "n_val": 0, "n_test": 2})
