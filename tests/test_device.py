"""Choosing the device, and that training and translation put every tensor on the device chosen.

The device tests run for every device this machine has (the CPU at least);
the choice itself is checked on any machine by making CUDA and MPS look
present or absent.
"""

import math

import pytest
import torch
from helpers import make_untrained_run, tiny_model_config, tiny_train_config, write_slice

from seq2seq.config import DecodeConfig
from seq2seq.device import resolve_device
from seq2seq.errors import ConfigError
from seq2seq.search.translator import Translator
from seq2seq.training.distributed import join_process_group
from seq2seq.training.run import make_trainer

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
    trainer = make_trainer(tmp_path / "run", tiny_model_config(), tiny_train_config(corpus, "", max_steps=1), device,
                      on_event=lambda event: None)
    shards = trainer.batches.shards(1)  # every rank's batches of epoch 1: here, one rank's
    trainer.update(shards[0][:1], trainer.batches.update_tokens(1, 0, 1))
    tensors = {**{f"model.{k}": v for k, v in trainer.model.state_dict().items()},
               **{f"optimizer.{i}.{k}": v for i, state in trainer.optimizer.state_dict()["state"].items()
                  for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() > 0},
               "non_finite.skipped": trainer.non_finite.skipped}
    for side in ("train_src", "train_tgt"):  # a device store's ids (a mapped store's stay in the map)
        store = getattr(trainer.data, side)
        if store.placement == "device":
            tensors[f"{side}.values"] = store.values
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


# ---------------------------------------------------------------------------
# The precision each device computes in: checked by making the GPU look like one generation or another.

@pytest.mark.parametrize("capability, autocast, tf32", [((9, 0), torch.bfloat16, True), ((8, 0), torch.bfloat16, True),
                                                        ((7, 5), None, False), ((7, 0), None, False),
                                                        ((6, 1), None, False)])
def test_precision_follows_what_the_gpu_can_do(monkeypatch, capability, autocast, tf32):
    from seq2seq.device import precision_policy

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    policy = precision_policy(torch.device("cuda"))
    assert (policy.autocast_dtype, policy.tf32) == (autocast, tf32)
    assert policy.description.startswith("bf16" if autocast is torch.bfloat16 else "float32")
    if autocast is None:  # it says why
        assert f"{capability[0]}.{capability[1]}" in policy.description and "no bf16" in policy.description


@pytest.mark.parametrize("kind", ["cpu", "mps"])
def test_the_cpu_and_mps_compute_in_float32(kind):
    import contextlib

    from seq2seq.device import mixed_precision, precision_policy

    assert precision_policy(torch.device(kind)).autocast_dtype is None
    assert isinstance(mixed_precision(torch.device(kind)), contextlib.nullcontext)


@pytest.mark.parametrize("search", ["greedy", "beam", "sampling"])
def test_decoding_logits_are_float32_even_under_bf16_autocast(monkeypatch, search):
    """bf16 logits flip near-ties: the search projects and normalises in float32 whatever autocast says."""
    from seq2seq.model.transformer import build_model
    from seq2seq.search.decode import nbest_ids

    cfg = tiny_model_config()
    cfg.src_vocab_size = cfg.tgt_vocab_size = 60
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seen = []
    project = model.output_logits

    def spy(states):
        logits = project(states)
        seen.append((states.dtype, logits.dtype))
        return logits

    monkeypatch.setattr(model, "output_logits", spy)
    decode = {"greedy": DecodeConfig(beam=1), "beam": DecodeConfig(beam=3),
              "sampling": DecodeConfig(sampling=True, seed=1)}[search]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nbest_ids(model, [[5, 6, 7, 3], [8, 3]], decode)
    assert seen and set(seen) == {(torch.float32, torch.float32)}


# ---------------------------------------------------------------------------
# --precision: what each device is asked to compute in, and what it refuses.

@pytest.mark.parametrize("has_bf16", [True, False])
def test_the_cpu_trains_in_bf16_only_when_asked_and_only_with_bf16_instructions(monkeypatch, has_bf16):
    from seq2seq import device as device_module
    from seq2seq.device import precision_policy

    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: has_bf16)
    cpu = torch.device("cpu")
    assert precision_policy(cpu, "auto").autocast_dtype is None
    assert precision_policy(cpu, "float32").autocast_dtype is None
    if has_bf16:
        assert precision_policy(cpu, "bf16").autocast_dtype is torch.bfloat16
    else:  # emulated bf16 is many times slower than float32: refused, saying why
        with pytest.raises(ConfigError, match="precision bf16: cpu has no bf16 instructions"):
            precision_policy(cpu, "bf16")


@pytest.mark.parametrize("capability", [(9, 0), (7, 5)])
def test_a_gpu_takes_float32_when_asked_and_bf16_only_from_ampere_on(monkeypatch, capability):
    from seq2seq.device import precision_policy

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    gpu = torch.device("cuda")
    assert (precision_policy(gpu, "float32").autocast_dtype, precision_policy(gpu, "float32").tf32) == (None, False)
    if capability >= (8, 0):
        assert precision_policy(gpu, "bf16").autocast_dtype is torch.bfloat16
    else:
        with pytest.raises(ConfigError, match="compute capability 7.5"):
            precision_policy(gpu, "bf16")


def test_mps_and_unknown_precisions_are_refused():
    from seq2seq.device import precision_policy

    with pytest.raises(ConfigError, match="mps is not supported"):
        precision_policy(torch.device("mps"), "bf16")
    with pytest.raises(ConfigError, match="must be one of auto, float32, bf16"):
        precision_policy(torch.device("cpu"), "fp16")


def test_training_refuses_an_unavailable_precision_before_preparing_data(monkeypatch, tmp_path):
    from seq2seq import device as device_module

    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: False)
    cfg = tiny_train_config(str(tmp_path / "never-read"), "", precision="bf16")
    with pytest.raises(ConfigError, match="precision bf16"):
        make_trainer(tmp_path / "run", tiny_model_config(), cfg, torch.device("cpu"), on_event=lambda event: None)
    assert not (tmp_path / "run").exists()


def test_bf16_training_on_the_cpu_runs_its_layers_and_loss_in_bf16(monkeypatch, tmp_path):
    """Forced on (emulated where the CPU lacks bf16 instructions: slow, but tiny here)."""
    from seq2seq import device as device_module

    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)
    corpus = write_slice(tmp_path / "data", "train", 100, "train")
    events = []
    cfg = tiny_train_config(corpus, "", max_steps=3, log_every=1, precision="bf16")
    trainer = make_trainer(tmp_path / "run", tiny_model_config(), cfg, torch.device("cpu"), on_event=events.append)
    matmul_dtypes = set()
    real_mm = torch.Tensor.__matmul__

    def spy(a, b):
        result = real_mm(a, b)
        matmul_dtypes.add(result.dtype)
        return result

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)  # the loss's products use @
    trainer.run()
    start = next(e for e in events if e["event"] == "start")
    assert start["precision"].startswith("bf16 autocast on the CPU")
    assert matmul_dtypes == {torch.bfloat16}
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses and all(math.isfinite(x) for x in losses)


@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_validation_decodes_in_the_precision_training_runs_in(monkeypatch, tmp_path, precision):
    from seq2seq import device as device_module
    from seq2seq.search.engines.torch_engine import TorchEngine

    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)
    seen = []
    real_init = TorchEngine.__init__

    def spy(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append(getattr(self.autocast, "fast_dtype", None))  # None: no autocast, float32

    monkeypatch.setattr(TorchEngine, "__init__", spy)
    corpus = write_slice(tmp_path / "data", "train", 60, "train")
    valid = write_slice(tmp_path / "data", "val", 10, "val")
    cfg = tiny_train_config(corpus, valid, max_steps=1, precision=precision)
    make_trainer(tmp_path / "run", tiny_model_config(), cfg, torch.device("cpu"), on_event=lambda event: None).run()
    assert seen and set(seen) == {torch.bfloat16 if precision == "bf16" else None}


# ---------------------------------------------------------------------------
# The attention kernels: chosen once with the precision, and named with it.

@pytest.mark.parametrize("kind, requested", [("cuda", "auto"), ("cuda", "float32"), ("cuda", "bf16"), ("cpu", "auto"),
                                             ("cpu", "float32"), ("mps", "auto")])
def test_cuda_leaves_cudnn_attention_out_and_says_so_and_other_devices_keep_torchs_choice(monkeypatch, kind,
                                                                                          requested):
    """On CUDA, cuDNN attention (a plan built for every new shape) is taken out of SDPA's order whatever the
    precision, and the run's first line says so; elsewhere nothing is switched and nothing more is said."""
    from seq2seq.device import mixed_precision, precision_policy

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    switched = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", switched.append)
    device = torch.device(kind)
    policy = precision_policy(device, requested)
    mixed_precision(device, "float32")  # what every computation on the device calls first (float32: no TF32 to set)
    if kind == "cuda":
        assert switched == [False]
        assert policy.description.endswith("; attention by SDPA without cuDNN (flash, memory-efficient or math kernels)")
        assert policy.description.startswith("float32" if requested == "float32" else "bf16")
    else:
        assert switched == [] and policy.attention is None and "attention" not in policy.description


def test_the_attention_switch_is_one_torch_211_and_213_both_have():
    """The one call the choice makes exists in this torch, and its flag reads back (restored after)."""
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(False)
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() or torch.backends.cuda.mem_efficient_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
