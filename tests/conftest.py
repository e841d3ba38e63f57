"""Shared fixtures, and a test session that never touches the network or the user's caches."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# datasets reads these at import time, so they are set before anything imports it;
# `s2s` subprocesses started by the tests inherit them.
_SESSION_CACHE = tempfile.mkdtemp(prefix="s2s-tests-hf-")
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)
os.environ["HF_DATASETS_CACHE"] = _SESSION_CACHE
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import datasets  # noqa: E402
import pytest  # noqa: E402

MULTI30K = Path(__file__).resolve().parent.parent / "data" / "multi30k"


@pytest.fixture(scope="session")
def multi30k() -> Path:
    """The bundled Multi30k folder: {train,val,test_2016_flickr}.{en,de,fr,cs}.gz."""
    return MULTI30K


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, offline `datasets` cache for one test, never the user's own."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets reads these variables once, at import time.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return cache
