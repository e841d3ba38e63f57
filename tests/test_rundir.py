import json
import pickle
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, make_untrained_run, write_slice
from safetensors import safe_open

from seq2seq.config import ModelConfig
from seq2seq.data.corpora import load_corpus
from seq2seq.data.tokenizer import train_tokenizer
from seq2seq.errors import RunDirError
from seq2seq.files.atomic import atomic_write_text
from seq2seq.model.transformer import build_model
from seq2seq.runs.run_dir import load_run
from seq2seq.runs.weights import load_weights, save_weights

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A minimal run directory: config, tokenizer and untrained weights."""
    return make_untrained_run(tmp_path_factory.mktemp("run"))


def copy_run(run_dir, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for name in ("config.json", "tokenizer.model", "model.safetensors"):
        (target / name).write_bytes((run_dir / name).read_bytes())
    return target


def test_run_loads(run_dir):
    model, tokenizers, config = load_run(run_dir, CPU)
    assert not model.training
    assert tokenizers.shared and config.model.d_model == 16


def test_tied_weights_round_trip(tmp_path):
    cfg = ModelConfig(src_vocab_size=30, tgt_vocab_size=30, d_model=16, n_heads=2, ffn_dim=32,
                      encoder_layers=1, decoder_layers=1)
    a, b = build_model(cfg), build_model(cfg)
    save_weights(a, tmp_path / "w.safetensors")
    load_weights(b, tmp_path / "w.safetensors")
    assert b.src_embed.weight is b.tgt_embed.weight
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("missing", ["model.safetensors", "tokenizer.model", "config.json"])
def test_missing_file_is_a_clear_error(run_dir, tmp_path, missing):
    run = copy_run(run_dir, tmp_path)
    (run / missing).unlink()
    with pytest.raises(RunDirError, match=missing.split(".")[0]):
        load_run(run, CPU)


def test_truncated_weights_are_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="safetensors"):
        load_run(run, CPU)


class Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickle_posing_as_weights_is_refused_without_running_it(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = copy_run(run_dir, tmp_path)
    (run / "model.safetensors").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(RunDirError):
        load_run(run, CPU)
    assert not (tmp_path / "PWNED").exists()


def test_swapped_tokenizer_is_caught(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    other = train_tokenizer(load_corpus(write_slice(tmp_path / "c", "train", 300), "en", "de"),
                            tmp_path / "other", vocab_size=150)
    (run / "tokenizer.model").write_bytes(other.src.path.read_bytes())
    with pytest.raises(RunDirError, match="sha256"):
        load_run(run, CPU)


def test_vocab_size_must_match_embeddings(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["model"]["src_vocab_size"] = config["model"]["tgt_vocab_size"] = 151
    config["tokenizer_sha256"] = {}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="config.json: model.src_vocab_size is 151, .* gives 150"):
        load_run(run, CPU)


def test_future_format_version_is_refused(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["format_version"] = 99
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="format version 99"):
        load_run(run, CPU)


def test_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    from seq2seq.errors import WriteError
    from seq2seq.files.atomic import atomic_write
    with pytest.raises(WriteError, match="No space left on device"):
        atomic_write(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_written_files_get_ordinary_permissions(tmp_path):
    import os
    atomic_write_text(tmp_path / "f.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    assert os.stat(tmp_path / "f.txt").st_mode == os.stat(tmp_path / "plain.txt").st_mode


def test_the_same_weights_give_the_same_bytes_in_any_process(tmp_path):
    """safetensors orders metadata differently in each process; save_weights sorts it."""
    script = ("import sys, torch; from seq2seq.config import ModelConfig; from seq2seq.model.transformer import build_model; "
              "from seq2seq.runs.weights import save_weights; torch.manual_seed(0); "
              "cfg = ModelConfig(d_model=16, n_heads=2, ffn_dim=32, encoder_layers=1, decoder_layers=1, "
              "src_vocab_size=50, tgt_vocab_size=50); "
              "save_weights(build_model(cfg), sys.argv[1], metadata={'step': '3', 'valid_bleu': '1.5', 'z': 'x'})")
    outputs = [tmp_path / f"w{i}.safetensors" for i in range(3)]
    for path in outputs:
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=ROOT, timeout=120)
    assert len({path.read_bytes() for path in outputs}) == 1
    with safe_open(str(outputs[0]), framework="pt") as f:
        assert f.metadata()["valid_bleu"] == "1.5"
