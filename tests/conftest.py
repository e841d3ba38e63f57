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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny run trained for 100 updates: varied outputs, some ended by EOS and some by the
    length limit. Its max_positions is 64, so that a few sentences joined make a line that must
    be split. Tests only read it."""
    import torch
    from helpers import tiny_train_config, write_slice

    from seq2seq.config import ModelConfig
    from seq2seq.training.run import train

    folder = tmp_path_factory.mktemp("trained")
    corpus = write_slice(folder / "corpus", "train", 300, "train")
    torch.manual_seed(0)
    model = ModelConfig(d_model=64, n_heads=4, ffn_dim=128, encoder_layers=2, decoder_layers=2, dropout=0.1,
                        max_positions=64)
    train(folder / "run", model, tiny_train_config(corpus, "", epochs=0, max_steps=100, lr=5e-3, log_every=50,
                                                   max_len=63), torch.device("cpu"))
    return folder / "run"


@pytest.fixture(scope="session")
def exported_run(trained_run, tmp_path_factory) -> Path:
    """`trained_run` exported to CTranslate2 (skipped where ctranslate2 is not installed)."""
    pytest.importorskip("ctranslate2", reason="the CTranslate2 engine needs the optional ctranslate2 package: "
                                              "pip install 's2s[ctranslate2]'")
    from seq2seq.runs.ctranslate2_export import export_ctranslate2

    return export_ctranslate2(trained_run, tmp_path_factory.mktemp("exported") / "ct2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests, as CTranslate2 is given one: comparable, and repeatable."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
