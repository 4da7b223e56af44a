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
