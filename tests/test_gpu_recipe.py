"""The GPU's recipe (seq2seq.training.recipes): a new run on CUDA whose command chose none of its
settings trains with it; a command that gives any one of them, or a config file, a preset or
--init-from, gets nothing of it; the CPU and MPS never do. Checked through `s2s train` for every
flag, with the device resolved to CUDA (the configs are what the library receives; nothing trains)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import seq2seq.device
from seq2seq.config import ModelConfig, TrainConfig
from seq2seq.presets import apply_preset
from seq2seq.training.recipes import (
    CHOSEN_BY_RECIPE_MODEL,
    CHOSEN_BY_RECIPE_TRAIN,
    GPU_PRESET,
    GPU_TRAINING,
    gpu_recipe_applies,
    with_gpu_recipe,
)
from test_options import NON_DEFAULT, SETTABLE_FIELDS, invoke, received  # noqa: F401 (the fixture `configs` uses)

RECIPE_MODEL, RECIPE_TRAIN = with_gpu_recipe(ModelConfig(), TrainConfig())
TRAINING_FIELDS = [p for p in SETTABLE_FIELDS if p.values[0] in (ModelConfig, TrainConfig)]


@pytest.fixture
def configs(request):
    """What `s2s train` hands the library: {ModelConfig: ..., TrainConfig: ...} (test_options' fixture)."""
    return request.getfixturevalue("received")


@pytest.fixture
def on_cuda(monkeypatch):
    """`s2s train --device auto` resolves to CUDA, as on a GPU machine."""
    monkeypatch.setattr(seq2seq.device, "resolve_device", lambda name: torch.device("cuda"))


def chooses_its_own_recipe(cls, name: str) -> bool:
    return name in (CHOSEN_BY_RECIPE_MODEL if cls is ModelConfig else CHOSEN_BY_RECIPE_TRAIN) or name == "init_from"


def test_the_recipe_is_a_valid_config_that_differs_from_the_defaults():
    assert RECIPE_MODEL == apply_preset(ModelConfig(), GPU_PRESET)
    assert {name: getattr(RECIPE_TRAIN, name) for name in GPU_TRAINING} == GPU_TRAINING
    assert any(getattr(TrainConfig(), name) != value for name, value in GPU_TRAINING.items())


def test_a_bare_command_on_cuda_takes_the_recipe_and_says_so(on_cuda, configs, tmp_path):
    result = invoke("train", [], tmp_path)
    assert configs[ModelConfig] == RECIPE_MODEL and configs[TrainConfig] == RECIPE_TRAIN
    assert "recipe: the GPU's (--preset small --max-tokens 8192" in result.output


def test_the_cpu_keeps_the_defaults(configs, tmp_path, monkeypatch):
    for device in ("cpu", "mps"):
        monkeypatch.setattr(seq2seq.device, "resolve_device", lambda name, device=device: torch.device(device))
        result = invoke("train", [], tmp_path)
        assert configs[ModelConfig] == ModelConfig() and configs[TrainConfig] == TrainConfig(), device
        assert "recipe" not in result.output


@pytest.mark.parametrize("cls, field", TRAINING_FIELDS)
def test_any_flag_of_the_recipe_chooses_a_whole_recipe_and_others_keep_it(cls, field, on_cuda, configs, tmp_path):
    args, changes = NON_DEFAULT[cls][field.name]
    result = invoke("train", args, tmp_path)
    own = chooses_its_own_recipe(cls, field.name)
    base = {ModelConfig: ModelConfig(), TrainConfig: TrainConfig()} if own else \
        {ModelConfig: RECIPE_MODEL, TrainConfig: RECIPE_TRAIN}
    base[cls] = dataclasses.replace(base[cls], **changes)
    assert configs[ModelConfig] == base[ModelConfig] and configs[TrainConfig] == base[TrainConfig]
    assert ("recipe: the GPU's" in result.output) is not own


def test_a_preset_or_a_config_file_chooses_the_recipe(on_cuda, configs, tmp_path):
    invoke("train", ["--preset", "tiny"], tmp_path)
    assert configs[TrainConfig] == TrainConfig()
    (tmp_path / "c.json").write_text(json.dumps({"train": {"seed": 3}}))
    invoke("train", ["--config", str(tmp_path / "c.json")], tmp_path)
    assert configs[ModelConfig] == ModelConfig() and configs[TrainConfig] == TrainConfig(seed=3)


def test_a_run_without_an_end_keeps_the_defaults(on_cuda, configs, tmp_path):
    """The recipe's cosine decays to the run's end: with no limit at all, nothing of it applies."""
    invoke("train", ["--epochs", "0"], tmp_path)
    assert configs[ModelConfig] == ModelConfig() and configs[TrainConfig] == TrainConfig(epochs=0)
    invoke("train", ["--epochs", "0", "--max-time", "60"], tmp_path)
    assert configs[TrainConfig] == dataclasses.replace(RECIPE_TRAIN, epochs=0, max_time=60.0)


@pytest.mark.parametrize("device_type", ["cpu", "mps", "cuda"])
def test_only_cuda_takes_the_recipe(device_type):
    assert gpu_recipe_applies(device_type, TrainConfig(), config_file=None, preset=None, model_flags=set(),
                              train_flags={"max_time", "positions"}) is (device_type == "cuda")
