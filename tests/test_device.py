"""Choosing the device, and that training and translation put every tensor on the device chosen.

The device tests run for every device this machine has (the CPU at least);
the choice itself is checked on any machine by making CUDA and MPS look
present or absent.
"""

import pytest
import torch

from seq2seq.config import DecodeConfig
from seq2seq.device import resolve_device
from seq2seq.distributed import join_process_group
from seq2seq.errors import ConfigError
from seq2seq.train import Trainer
from seq2seq.translator import Translator

from helpers import make_untrained_run, tiny_model_config, tiny_train_config, write_slice

AVAILABLE = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if torch.backends.mps.is_available() else [])


def pretend(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    pretend(monkeypatch, cuda, mps)
    assert resolve_device("auto") == torch.device(expected)
    assert join_process_group("auto") == torch.device(expected)  # one process: no process group


def test_an_explicit_device_is_taken_as_named(monkeypatch):
    pretend(monkeypatch, cuda=True, mps=True)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("mps") == torch.device("mps")


def test_an_unavailable_device_is_refused(monkeypatch):
    pretend(monkeypatch, cuda=False, mps=False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="MPS backend is not available"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        join_process_group("cuda")


def test_unknown_device_is_an_error():
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_device("tpu")


def same_device(tensor: torch.Tensor, device: torch.device) -> bool:
    """On `device`; a bare "cuda" means whichever GPU is current."""
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


@pytest.mark.parametrize("name", AVAILABLE)
def test_the_trainer_puts_every_tensor_on_the_device(tmp_path, name):
    device = resolve_device(name)
    corpus = write_slice(tmp_path / "data", "train", 100, "train")
    trainer = Trainer(tmp_path / "run", tiny_model_config(), tiny_train_config(corpus, "", max_steps=1), device,
                      on_event=lambda event: None)
    trainer.update(trainer.batches.epoch(1)[:1])
    tensors = {**{f"model.{k}": v for k, v in trainer.model.state_dict().items()},
               **{f"optimizer.{i}.{k}": v for i, state in trainer.optimizer.state_dict()["state"].items()
                  for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() > 0},
               "train_src.values": trainer.data.train_src.values, "train_tgt.values": trainer.data.train_tgt.values,
               "non_finite.skipped": trainer.non_finite.skipped}
    batch = trainer.gradients.collate_batch(trainer.batches.epoch(1)[0])
    tensors.update(src=batch.src, tgt_in=batch.tgt_in, tgt_out=batch.tgt_out)
    misplaced = [key for key, value in tensors.items() if not same_device(value, device)]
    assert not misplaced


@pytest.mark.parametrize("name", AVAILABLE)
def test_the_translator_runs_on_the_device(tmp_path, name):
    device = resolve_device(name)
    translator = Translator.from_run(make_untrained_run(tmp_path), device, DecodeConfig(beam=2, max_len_b=3))
    assert all(same_device(p, device) for p in translator.model.parameters())
    assert all(same_device(b, device) for b in translator.model.buffers())
    assert len(translator.translate(["A dog.", "", "Two men."])) == 3
    sampler = Translator.for_model(translator.model, translator.tokenizers, DecodeConfig(sampling=True, seed=1, max_len_b=3))
    assert sampler.engine.generator.device.type == device.type
