import pytest
import torch

from seq2seq.checkpoint import atomic_write_text, save_weights
from seq2seq.config import DecodeConfig, ModelConfig, RunConfig
from seq2seq.data import load_corpus
from seq2seq.model import build_model
from seq2seq.tokenizer import train_tokenizer
from seq2seq.translator import Translator

from helpers import write_slice

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    """An untrained model whose sources may be at most 15 tokens: enough to test the contract."""
    folder = tmp_path_factory.mktemp("run")
    tokenizers = train_tokenizer(load_corpus(write_slice(folder / "c", "val", 300), "en", "de"), folder,
                                 vocab_size=150)
    cfg = ModelConfig(src_vocab_size=150, tgt_vocab_size=150, d_model=16, n_heads=2, ffn_dim=32,
                      encoder_layers=1, decoder_layers=1, max_positions=16)
    atomic_write_text(folder / "config.json", RunConfig(model=cfg, tokenizer_sha256={
        "tokenizer.model": tokenizers.src.sha256}).to_json())
    torch.manual_seed(0)
    save_weights(build_model(cfg), folder / "model.safetensors")
    return Translator.from_run(folder, CPU, DecodeConfig(beam=2, max_len_b=4))


def test_one_line_out_per_line_in(translator):
    lines = ["A dog.", "", " \t ", "Two men are talking.", "x\u2028y"]
    out = translator.translate(lines)
    assert len(out) == len(lines)
    assert out[1] == "" and out[2] == ""
    assert all(line.splitlines() == [line] for line in out if line)
    assert translator.stats.empty == 2 and translator.stats.lines == 5


def test_over_long_lines_are_truncated_and_counted(translator):
    before = translator.stats.truncated
    out = translator.translate(["a man " * 40, "A dog."])
    assert len(out) == 2
    assert translator.stats.truncated == before + 1
    assert translator.max_source_tokens == 15


def test_output_does_not_depend_on_the_other_lines_in_the_batch(translator):
    lines = ["A dog runs.", "Two men are talking in a park.", "A girl."]
    together = translator.translate(lines)
    assert [translator.translate([line])[0] for line in lines] == together
