"""Export to CTranslate2: every model variant either converts to a folder that computes what s2s computes,
or is refused with a reason; a failed export leaves nothing behind."""

import pytest

ctranslate2 = pytest.importorskip(
    "ctranslate2", reason="the CTranslate2 export needs the optional ctranslate2 package: "
                          "pip install 's2s[ctranslate2]'")

import gzip  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from helpers import MULTI30K, make_untrained_run, tiny_train_config, write_slice  # noqa: E402

from seq2seq.config import DecodeConfig, ModelConfig  # noqa: E402
from seq2seq.config_merge import run_config_from_json  # noqa: E402
from seq2seq.errors import ConfigError, WriteError  # noqa: E402
from seq2seq.files.atomic import atomic_write_text  # noqa: E402
from seq2seq.model.transformer import build_model  # noqa: E402
from seq2seq.runs.ctranslate2_export import EXPORT_FILE, EXPORT_FORMAT_VERSION, QUANTIZATIONS, export_ctranslate2  # noqa: E402
from seq2seq.runs.run_dir import load_run  # noqa: E402
from seq2seq.runs.weights import save_weights
from seq2seq.search.decode import nbest_ids
from seq2seq.search.hypotheses import length_penalty_factor  # noqa: E402
from seq2seq.training.run import train  # noqa: E402

CPU = torch.device("cpu")
SENTENCES = 30  # validation sentences each exported variant translates
STEPS = 100  # training updates: enough for varied outputs, some ended by EOS, some by the length limit


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Training and both engines on one thread: the tiny models gain nothing from more, and on a busy
    machine threads waiting on each other made a run of this module several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_slice(tmp_path_factory.mktemp("corpus"), "train", 300, "train")


@pytest.fixture(scope="module")
def tokenizer_folders(corpus, tmp_path_factory):
    """A shared tokenizer and a pair of separate ones, trained once for every run of the module."""
    from seq2seq.data.corpora import load_corpus
    from seq2seq.data.tokenizer import train_tokenizer

    pairs = load_corpus(corpus, "en", "de")
    shared, separate = tmp_path_factory.mktemp("shared"), tmp_path_factory.mktemp("separate")
    train_tokenizer(pairs, shared, vocab_size=200)
    train_tokenizer(pairs, separate, vocab_size=200, shared=False)
    return {"shared": str(shared), "separate": str(separate)}


@pytest.fixture(scope="module")
def validation():
    """The first SENTENCES validation pairs: (English sources, German references)."""
    def read(lang):
        with gzip.open(MULTI30K / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
            return [next(f).rstrip("\n") for _ in range(SENTENCES)]
    return read("en"), read("de")


def model_config(**overrides) -> ModelConfig:
    """Small, but with several layers and heads, so that fusing and splitting them is tested."""
    values = dict(d_model=64, n_heads=4, ffn_dim=128, encoder_layers=2, decoder_layers=2, dropout=0.1,
                  max_positions=256)
    values.update(overrides)
    return ModelConfig(**values)


def train_run(folder: Path, corpus: str, tokenizer: str, **overrides) -> Path:
    torch.manual_seed(0)
    train(folder, model_config(**overrides),
          tiny_train_config(corpus, "", tokenizer=tokenizer, epochs=0, max_steps=STEPS, lr=5e-3, log_every=50), CPU)
    return folder


def pieces_of(tokenizer) -> list[str]:
    return tokenizer.pieces()


def ct2_search(translator, src_ids: list[list[int]], limits: list[int], src_vocab: list[str],
               tgt_index: dict[str, int], beam: int) -> list[list[int]]:
    """CTranslate2's output ids, one call per length limit (s2s has one limit per sentence).

    Beyond greedy search, all `beam` hypotheses come back with their raw log-probabilities
    (length_penalty 0) and are re-ranked with s2s's GNMT penalty, as DecodeConfig's defaults say.
    No suppress_sequences: see seq2seq.runs.ctranslate2_export on why.
    """
    decode = DecodeConfig()
    found: dict[int, list[int]] = {}
    for limit in sorted(set(limits)):
        rows = [i for i, row_limit in enumerate(limits) if row_limit == limit]
        results = translator.translate_batch(
            [[src_vocab[t] for t in src_ids[i]] for i in rows], beam_size=beam, num_hypotheses=beam,
            length_penalty=0.0, return_scores=True, max_decoding_length=limit, min_decoding_length=1)
        for i, result in zip(rows, results):
            # An output that ended with EOS counts it; one cut at the limit has limit tokens.
            best = max(zip(result.hypotheses, result.scores), key=lambda pair: pair[1] / length_penalty_factor(
                len(pair[0]) + (len(pair[0]) < limit), decode.length_penalty, decode.alpha))[0]
            found[i] = [tgt_index[token] for token in best]
    return [found[i] for i in range(len(src_ids))]


def s2s_logprobs(model, src: list[int], tgt: list[int]) -> torch.Tensor:
    """Teacher-forced log-probabilities of tgt + EOS given src, one per token."""
    cfg = model.cfg
    with torch.inference_mode():
        logits = model(torch.tensor([src]), torch.tensor([[cfg.bos_id] + tgt]))[0]  # (T, V)
        return logits.float().log_softmax(-1).gather(1, torch.tensor(tgt + [cfg.eos_id])[:, None]).squeeze(1)


def check_same_computation(run: Path, folder: Path, sources: list[str], references: list[str]) -> None:
    """The exported folder's greedy and beam-5 outputs are s2s's, token for token, and so are the
    log-probabilities of the references, to 1e-4 per token."""
    model, tokenizers, config = load_run(run, CPU)
    info = json.loads((folder / EXPORT_FILE).read_text())
    assert info["decode"]["length_penalty"] == DecodeConfig().length_penalty
    src_vocab, tgt_vocab = pieces_of(tokenizers.src), pieces_of(tokenizers.tgt)
    tgt_index = {piece: i for i, piece in enumerate(tgt_vocab)}
    eos = src_vocab.index(info["source_suffix"][0])
    src_ids = [ids + [eos] for ids in tokenizers.src.encode(sources)]
    translator = ctranslate2.Translator(str(folder), device="cpu", intra_threads=1)
    outputs, endings = [], []
    # Greedy with s2s's default limits, then with short ones that cut most outputs; beam 5.
    for decode in (DecodeConfig(beam=1), DecodeConfig(beam=1, max_len_a=0.25, max_len_b=2), DecodeConfig(beam=5)):
        limits = [min(int(decode.max_len_a * len(ids) + decode.max_len_b), config.model.max_positions - 1)
                  for ids in src_ids]
        expected = [hypotheses[0] for hypotheses in nbest_ids(model, src_ids, decode)]
        got = ct2_search(translator, src_ids, limits, src_vocab, tgt_index, decode.beam)
        assert [h.tokens for h in expected] == got, f"beam {decode.beam}"
        outputs += [tuple(h.tokens) for h in expected]
        endings += [h.hit_limit for h in expected]
    assert len(set(outputs)) >= 10  # not the same output for every line
    assert any(endings) and not all(endings)  # some outputs end with EOS, some at the length limit

    tgt_ids = tokenizers.tgt.encode(references)
    scored = translator.score_batch([[src_vocab[t] for t in ids] for ids in src_ids],
                                    [[tgt_vocab[t] for t in ids] for ids in tgt_ids])
    worst = 0.0
    for src, tgt, result in zip(src_ids, tgt_ids, scored):
        assert result.tokens == [tgt_vocab[t] for t in tgt + [config.model.eos_id]]
        worst = max(worst, (s2s_logprobs(model, src, tgt) - torch.tensor(result.log_probs)).abs().max().item())
    assert worst < 1e-4


# Every pair of norm x positions, positions x activation and norm x activation is covered.
@pytest.mark.parametrize("norm,positions,activation", [
    ("pre", "sinusoidal", "relu"), ("post", "sinusoidal", "gelu"),
    ("pre", "learned", "gelu"), ("post", "learned", "relu"),
    ("pre", "rope", "relu"), ("post", "rope", "gelu"),
])
def test_every_architecture_variant_exports_and_computes_what_s2s_does(
        corpus, tokenizer_folders, validation, tmp_path, norm, positions, activation):
    run = train_run(tmp_path / "run", corpus, tokenizer_folders["shared"], norm=norm, positions=positions,
                    activation=activation)
    folder = export_ctranslate2(run, tmp_path / "export")
    assert folder == tmp_path / "export"
    check_same_computation(run, folder, *validation)


@pytest.mark.parametrize("vocabularies", ["separate tokenizers", "shared tokenizer, untied embeddings"])
def test_separate_vocabularies_and_untied_embeddings_export(corpus, tokenizer_folders, validation, tmp_path,
                                                           vocabularies):
    separate = vocabularies == "separate tokenizers"
    run = train_run(tmp_path / "run", corpus, tokenizer_folders["separate" if separate else "shared"],
                    share_embeddings=False, norm="post" if separate else "pre")
    folder = export_ctranslate2(run, tmp_path / "export")
    names = {path.name for path in folder.iterdir()}
    if separate:
        assert {"source_vocabulary.json", "target_vocabulary.json", "tokenizer.src.model",
                "tokenizer.tgt.model"} <= names
        assert "tokenizer.model" not in names and "shared_vocabulary.json" not in names
    else:
        assert {"shared_vocabulary.json", "tokenizer.model"} <= names
    info = json.loads((folder / EXPORT_FILE).read_text())
    assert info["tokenizer"]["shared"] is not separate
    check_same_computation(run, folder, *validation)


def test_the_folder_describes_itself(tmp_path):
    run = make_untrained_run(tmp_path / "run")
    folder = export_ctranslate2(run, tmp_path / "export")
    assert {path.name for path in folder.iterdir()} == {
        "model.bin", "config.json", "shared_vocabulary.json", "tokenizer.model", EXPORT_FILE}
    assert (folder / "tokenizer.model").read_bytes() == (run / "tokenizer.model").read_bytes()
    info = json.loads((folder / EXPORT_FILE).read_text())
    run_config = json.loads((run / "config.json").read_text())
    assert info["format_version"] == EXPORT_FORMAT_VERSION and info["engine"] == "ctranslate2"
    assert info["run_config"] == run_config
    assert (info["src_lang"], info["tgt_lang"]) == ("en", "de")
    assert info["max_positions"] == run_config["model"]["max_positions"]
    assert info["tokenizer"] == {"shared": True, "src": "tokenizer.model", "tgt": "tokenizer.model"}
    assert info["source_suffix"] == ["</s>"] and info["decoder_start_token"] == "<s>"
    assert info["quantization"] == "float32" and info["weights"] == "model.safetensors"
    assert info["decode"]["beam"] == DecodeConfig().beam
    ct2_config = json.loads((folder / "config.json").read_text())
    assert ct2_config["decoder_start_token"] == "<s>" and ct2_config["add_source_eos"] is False
    assert ct2_config["layer_norm_epsilon"] == pytest.approx(1e-5)
    vocabulary = json.loads((folder / "shared_vocabulary.json").read_text())
    assert vocabulary[:4] == ["<pad>", "<unk>", "<s>", "</s>"] and len(vocabulary) == 150


@pytest.mark.parametrize("quantization", ["int8", "int8_float32", "int16", "float16"])
def test_quantized_exports_load_and_translate(tmp_path, quantization):
    run = make_untrained_run(tmp_path / "run")
    folder = export_ctranslate2(run, tmp_path / "export", quantization=quantization)
    assert json.loads((folder / EXPORT_FILE).read_text())["quantization"] == quantization
    translator = ctranslate2.Translator(str(folder), device="cpu", intra_threads=1)
    results = translator.translate_batch([["▁A", "</s>"], ["</s>"]], beam_size=2, max_decoding_length=5)
    assert len(results) == 2
    float32 = export_ctranslate2(run, tmp_path / "float32")
    assert 0 < (folder / "model.bin").stat().st_size < (float32 / "model.bin").stat().st_size


def test_a_bad_quantization_is_refused_before_anything_is_written(tmp_path):
    run = make_untrained_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="unknown quantization 'int4'; choose from float32, int8"):
        export_ctranslate2(run, tmp_path / "export", quantization="int4")
    assert not (tmp_path / "export").exists()
    assert "float32" in QUANTIZATIONS and "int8" in QUANTIZATIONS


def write_run_with(run: Path, **overrides) -> None:
    """Replace the config and weights of the untrained run in `run` with a model changed by `overrides`."""
    config = run_config_from_json(json.loads((run / "config.json").read_text()), "config.json")
    config.model = replace(config.model, **overrides)
    atomic_write_text(run / "config.json", config.to_json())
    save_weights(build_model(config.model), run / "model.safetensors")


@pytest.mark.parametrize("performer_in", ["encoder,decoder,cross", "cross"])
def test_performer_attention_is_refused_with_the_reason(tmp_path, performer_in):
    run = make_untrained_run(tmp_path / "run")
    write_run_with(run, attention="performer", performer_in=performer_in, performer_features=8)
    with pytest.raises(ConfigError, match="Performer .* CTranslate2 does not have"):
        export_ctranslate2(run, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_the_output_folder_must_be_new_or_empty_and_outside_the_run(tmp_path):
    run = make_untrained_run(tmp_path / "run")
    for inside in (run, run / "export", run / "checkpoints" / "export"):
        with pytest.raises(ConfigError, match="must not be inside the run directory"):
            export_ctranslate2(run, inside)
    assert not (run / "export").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        export_ctranslate2(run, full)
    assert [path.name for path in full.iterdir()] == ["keep.txt"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        export_ctranslate2(run, tmp_path / "a-file")
    empty = tmp_path / "empty"
    empty.mkdir()
    export_ctranslate2(run, empty)
    assert (empty / "model.bin").is_file()
    # An empty folder behind a symlink is filled; the link stays.
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    export_ctranslate2(run, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "target" / "model.bin").is_file()
    # Missing parent folders are created.
    export_ctranslate2(run, tmp_path / "new" / "deeper" / "export")
    assert (tmp_path / "new" / "deeper" / "export" / EXPORT_FILE).is_file()


def test_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    from ctranslate2.specs import model_spec

    run = make_untrained_run(tmp_path / "run")
    before = set(tmp_path.iterdir())

    def disk_full(self, output_dir):
        (Path(output_dir) / "model.bin").write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_spec.ModelSpec, "save", disk_full)
    with pytest.raises(WriteError, match="No space left on device"):
        export_ctranslate2(run, tmp_path / "new" / "export")
    assert set(tmp_path.iterdir()) == before  # no export, no staging folder, no parent made for it

    def interrupted(self, output_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_spec.ModelSpec, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_ctranslate2(run, tmp_path / "export")
    assert set(tmp_path.iterdir()) == before


def test_without_ctranslate2_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    run = make_untrained_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 's2s\[ctranslate2\]'"):
        export_ctranslate2(run, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_the_export_command_writes_the_folder_and_refuses_with_one_error_line(tmp_path):
    from typer.testing import CliRunner

    from cli.main import app

    run = make_untrained_run(tmp_path / "run")
    runner = CliRunner()
    done = runner.invoke(app, ["export", "-m", str(run), "-o", str(tmp_path / "ct2"), "--quantization", "int8"])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "ct2" / EXPORT_FILE).read_text())["quantization"] == "int8"
    for args, fragment in ((["-o", str(run / "inside")], "inside the run"),
                           (["-o", str(tmp_path / "x"), "--format", "onnx"], "--format must be one of"),
                           (["-o", str(tmp_path / "ct2")], "not empty")):
        refused = runner.invoke(app, ["export", "-m", str(run), *args])
        assert refused.exit_code == 1 and refused.stderr.startswith("error:") and fragment in refused.stderr, \
            refused.output
    assert not (run / "inside").exists() and not (tmp_path / "x").exists()
