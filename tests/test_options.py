"""The command line's options are the config dataclasses' fields (cli/options.py).

Every settable field of ModelConfig, TrainConfig, DistributedConfig and DecodeConfig is one flag on
the commands that take that config; given on the command line, it reaches the
library as that field; its help shows the field's help and default. Derived
fields have no flag. Old flag names keep working. And `--help` answers without
loading torch.
"""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import cli.train
import seq2seq.training.init_from
from cli.main import app
from seq2seq.config import DecodeConfig, DistributedConfig, ModelConfig, RunConfig, TrainConfig
from seq2seq.config_fields import settable_fields
from seq2seq.search.translator import Translator

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent

# The commands each config's fields are flags of.
COMMANDS = {ModelConfig: ("train",), TrainConfig: ("train",), DistributedConfig: ("train",),
            DecodeConfig: ("translate", "eval")}

# Set from the tokenizer when training starts, so they have no flag.
DERIVED = {ModelConfig: {"src_vocab_size", "tgt_vocab_size", "pad_id", "unk_id", "bos_id", "eos_id"},
           TrainConfig: set(), DistributedConfig: set(), DecodeConfig: set()}

# For every settable field: command-line arguments that set it to a value other than its
# default, valid with every other field at its default, and the fields the config then
# holds that differ from the defaults (a Performer setting needs --attention performer).
PERFORMER = ["--attention", "performer"]
NON_DEFAULT = {
    ModelConfig: {
        "d_model": (["--d-model", "128"], {"d_model": 128}),
        "n_heads": (["--n-heads", "8"], {"n_heads": 8}),
        "ffn_dim": (["--ffn-dim", "512"], {"ffn_dim": 512}),
        "encoder_layers": (["--encoder-layers", "2"], {"encoder_layers": 2}),
        "decoder_layers": (["--decoder-layers", "4"], {"decoder_layers": 4}),
        "dropout": (["--dropout", "0.3"], {"dropout": 0.3}),
        "attention_dropout": (["--attention-dropout", "0.2"], {"attention_dropout": 0.2}),
        "activation_dropout": (["--activation-dropout", "0.1"], {"activation_dropout": 0.1}),
        "activation": (["--activation", "gelu"], {"activation": "gelu"}),
        "norm": (["--norm", "post"], {"norm": "post"}),
        "max_positions": (["--max-positions", "512"], {"max_positions": 512}),
        "positions": (["--positions", "rope"], {"positions": "rope"}),
        "attention": (PERFORMER, {"attention": "performer"}),
        "performer_in": ([*PERFORMER, "--performer-in", "encoder"],
                         {"attention": "performer", "performer_in": "encoder"}),
        "performer_features": ([*PERFORMER, "--performer-features", "64"],
                               {"attention": "performer", "performer_features": 64}),
        "performer_redraw_every": ([*PERFORMER, "--performer-redraw-every", "0"],
                                   {"attention": "performer", "performer_redraw_every": 0}),
        "share_embeddings": (["--no-share-embeddings"], {"share_embeddings": False}),
    },
    TrainConfig: {
        "train": (["--train", "corpora/train.tsv"], {"train": "corpora/train.tsv"}),
        "valid": (["--valid", ""], {"valid": ""}),
        "src_lang": (["--src-lang", "fr"], {"src_lang": "fr"}),
        "tgt_lang": (["--tgt-lang", "cs"], {"tgt_lang": "cs"}),
        "tokenizer": (["--tokenizer", "runs/tok"], {"tokenizer": "runs/tok"}),
        "vocab_size": (["--vocab-size", "4000"], {"vocab_size": 4000}),
        "max_len": (["--max-len", "100"], {"max_len": 100}),
        "max_tokens": (["--max-tokens", "2500"], {"max_tokens": 2500}),
        "accum_steps": (["--accum-steps", "4"], {"accum_steps": 4}),
        "epochs": (["--epochs", "3"], {"epochs": 3}),
        "max_steps": (["--max-steps", "700"], {"max_steps": 700}),
        "max_time": (["--max-time", "840"], {"max_time": 840.0}),
        "lr": (["--lr", "3e-3"], {"lr": 3e-3}),
        "warmup_steps": (["--warmup-steps", "300"], {"warmup_steps": 300}),
        "lr_schedule": (["--lr-schedule", "cosine"], {"lr_schedule": "cosine"}),
        "betas": (["--betas", "0.8,0.99"], {"betas": (0.8, 0.99)}),
        "weight_decay": (["--weight-decay", "0.01"], {"weight_decay": 0.01}),
        "label_smoothing": (["--label-smoothing", "0.2"], {"label_smoothing": 0.2}),
        "clip_norm": (["--clip-norm", "0"], {"clip_norm": 0.0}),
        "valid_every": (["--valid-every", "50"], {"valid_every": 50}),
        "valid_beam": (["--valid-beam", "5"], {"valid_beam": 5}),
        "valid_bleu_sentences": (["--valid-bleu-sentences", "500"], {"valid_bleu_sentences": 500}),
        "patience": (["--patience", "0"], {"patience": 0}),
        "early_stop_metric": (["--early-stop-metric", "loss"], {"early_stop_metric": "loss"}),
        "keep_snapshots": (["--keep-snapshots", "2"], {"keep_snapshots": 2}),
        "average_last": (["--average-last", "3"], {"average_last": 3}),
        "log_every": (["--log-every", "5"], {"log_every": 5}),
        "max_bad_updates": (["--max-bad-updates", "2"], {"max_bad_updates": 2}),
        "seed": (["--seed", "2"], {"seed": 2}),
        "num_proc": (["--num-proc", "2"], {"num_proc": 2}),
        # The run's tokenizer comes with it (seq2seq.training.init_from.new_run_configs).
        "init_from": (["--init-from", "runs/base"], {"init_from": "runs/base", "tokenizer": "runs/base"}),
        "compile": (["--compile"], {"compile": True}),
        "shape_ladder": (["--shape-ladder", "on"], {"shape_ladder": "on"}),
        "subword_nbest": (["--subword-nbest", "64"], {"subword_nbest": 64}),
        "subword_alpha": (["--subword-alpha", "0.1"], {"subword_alpha": 0.1}),
        "lang_tag": (["--lang-tag", "target"], {"lang_tag": "target"}),
        "lang_temperature": (["--lang-temperature", "5"], {"lang_temperature": 5.0}),
        "precision": (["--precision", "float32"], {"precision": "float32"}),
        "token_store": (["--token-store", "mapped"], {"token_store": "mapped"}),
    },
    DistributedConfig: {
        "dist_timeout": (["--dist-timeout", "60"], {"dist_timeout": 60.0}),
        "prepare_timeout": (["--prepare-timeout", "7200"], {"prepare_timeout": 7200.0}),
    },
    DecodeConfig: {
        "tgt_lang": (["--tgt", "fr"], {"tgt_lang": "fr"}),
        "beam": (["--beam", "3"], {"beam": 3}),
        "length_penalty": (["--length-penalty", "gnmt"], {"length_penalty": "gnmt"}),
        "alpha": (["--alpha", "0.6"], {"alpha": 0.6}),
        "max_len_a": (["--max-len-a", "2.5"], {"max_len_a": 2.5}),
        "max_len_b": (["--max-len-b", "0"], {"max_len_b": 0}),
        "min_len": (["--min-len", "0"], {"min_len": 0}),
        "max_tokens": (["--max-tokens", "500"], {"max_tokens": 500}),
        "long_lines": (["--long-lines", "truncate"], {"long_lines": "truncate"}),
        "sampling": (["--sampling"], {"sampling": True}),
        "temperature": (["--temperature", "0.7"], {"temperature": 0.7}),
        "top_k": (["--top-k", "5"], {"top_k": 5}),
        "top_p": (["--top-p", "0.9"], {"top_p": 0.9}),
        "seed": (["--seed", "42"], {"seed": 42}),
    },
}

# The names flags had before they were generated from the fields; scripts, the
# Makefile, README and bench/ use them. (command, arguments, config, fields they set)
ALIASES = [
    ("train", ["--heads", "8"], ModelConfig, {"n_heads": 8}),
    ("train", ["--src", "fr", "--tgt", "en"], TrainConfig, {"src_lang": "fr", "tgt_lang": "en"}),
    ("train", ["--valid-bleu-max", "500"], TrainConfig, {"valid_bleu_sentences": 500}),
    ("translate", ["--batch-tokens", "500"], DecodeConfig, {"max_tokens": 500}),
    ("translate", ["--sample"], DecodeConfig, {"sampling": True}),
    ("translate", ["-b", "2"], DecodeConfig, {"beam": 2}),
    ("eval", ["--batch-tokens", "500", "--sample"], DecodeConfig, {"max_tokens": 500, "sampling": True}),
]

CONFIGS = (ModelConfig, TrainConfig, DistributedConfig, DecodeConfig)
ALL_FIELDS = [pytest.param(cls, f, id=f"{cls.__name__}.{f.name}")
              for cls in CONFIGS for f in dataclasses.fields(cls)]
SETTABLE_FIELDS = [p for p in ALL_FIELDS if p.values[1].name not in DERIVED[p.values[0]]]


class Captured(Exception):
    """Stops a translate or eval command once the library has been handed its config."""


@pytest.fixture
def received(monkeypatch):
    """What the library is handed, instead of training or translating: {config class: config}."""
    configs = {}

    def run_training(run_dir, model_cfg, train_cfg, device, resume, tensorboard=None, distributed=None):
        configs.update({ModelConfig: model_cfg, TrainConfig: train_cfg, DistributedConfig: distributed})

    def from_run(cls, run_dir, device, cfg, weights, engine=None, threads=None):
        configs.update({DecodeConfig: cfg, "weights": weights})
        raise Captured

    monkeypatch.setattr(cli.train, "run_training", run_training)
    # --init-from's run gives the model config; a default one changes nothing the tests compare.
    monkeypatch.setattr(seq2seq.training.init_from, "source_run", lambda path: RunConfig())
    monkeypatch.setattr(Translator, "from_run", classmethod(from_run))
    return configs


def invoke(command: str, args: list[str], tmp_path: Path):
    """`s2s COMMAND ARGS` with whatever else the command needs to reach the library."""
    (tmp_path / "s.en").write_text("A dog runs.\n")
    required = {"train": ["--run", str(tmp_path / "run")],
                "translate": ["-m", str(tmp_path / "run"), "--device", "cpu"],
                "eval": ["-m", str(tmp_path / "run"), "--src", str(tmp_path / "s.en"), "--ref",
                         str(tmp_path / "s.en"), "--device", "cpu"]}[command]
    result = runner.invoke(app, [command, *required, *args], input="A dog runs.\n")
    if command == "train":
        assert result.exit_code == 0, result.output
    else:
        assert isinstance(result.exception, Captured), (result.exit_code, result.output, result.exception)
    return result


def option(command: str, name: str):
    """The click option of `command` that sets the parameter `name`, or None."""
    params = typer.main.get_command(app).commands[command].params
    return next((p for p in params if p.name == name), None)


def test_every_field_is_settable_or_derived():
    for cls in CONFIGS:
        assert {f.name for f in settable_fields(cls)} == set(NON_DEFAULT[cls]), cls.__name__
        assert {f.name for f in dataclasses.fields(cls)} - set(NON_DEFAULT[cls]) == DERIVED[cls], cls.__name__


@pytest.mark.parametrize("cls, field", ALL_FIELDS)
def test_each_field_has_one_flag_on_its_commands(cls, field):
    for command in COMMANDS[cls]:
        found = option(command, field.name)
        if field.name in DERIVED[cls]:
            assert found is None and field.metadata["derived_from"], (command, field.name)
        else:
            assert found is not None, (command, field.name)
            assert found.opts[0] == "--" + field.name.replace("_", "-")


@pytest.mark.parametrize("cls, field", SETTABLE_FIELDS)
def test_each_flag_reaches_the_library_as_its_field(cls, field, received, tmp_path):
    args, changes = NON_DEFAULT[cls][field.name]
    assert changes[field.name] != field.default
    for command in COMMANDS[cls]:
        received.clear()
        invoke(command, args, tmp_path)
        assert received[cls] == dataclasses.replace(cls(), **changes), command


@pytest.mark.parametrize("command, args, cls, changes", ALIASES, ids=[" ".join(a[1]) for a in ALIASES])
def test_old_flag_names_still_work(command, args, cls, changes, received, tmp_path):
    invoke(command, args, tmp_path)
    assert received[cls] == dataclasses.replace(cls(), **changes)


def _default_text(field) -> str | None:
    """How the help shows a field's default; None where it shows none (the help says what none means)."""
    if isinstance(field.default, bool):
        name = field.name.replace("_", "-")
        return name if field.default else f"no-{name}"
    if isinstance(field.default, tuple):
        return ",".join(str(item) for item in field.default)
    return None if field.default in (None, "") else str(field.default)


@pytest.mark.parametrize("cls, field", SETTABLE_FIELDS)
def test_each_flag_shows_its_fields_help_and_default(cls, field):
    for command in COMMANDS[cls]:
        param = option(command, field.name)
        ctx = typer.main.get_command(app).commands[command].make_context(command, [], resilient_parsing=True)
        help_text = param.get_help_record(ctx)[1]
        assert field.metadata["help"] in help_text
        default = _default_text(field)
        if default is None:
            assert "default:" not in help_text, help_text
        else:
            assert f"[default: {default}]" in help_text, help_text


def test_help_lists_the_flags_by_group():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    panels = re.findall(r"╭─ (\w[\w ()]*?) ─", result.output)
    assert panels == ["Options", "Run", "Data", "Model", "Optimisation", "Validation", "Distributed (torchrun)"]
    assert "--n-heads,--heads" in result.output and "[default: 0.9,0.98]" in result.output
    translate = runner.invoke(app, ["translate", "--help"], env={"COLUMNS": "200"}).output
    assert re.findall(r"╭─ (\w+) ─", translate) == ["Options", "Search", "Sampling"]


def test_weights_default_to_the_runs_model(received, tmp_path):
    invoke("translate", [], tmp_path)
    assert received["weights"] is None  # the engine opens the run's own WEIGHTS_FILE
    invoke("eval", ["--weights", "average-last-5.safetensors"], tmp_path)
    assert received["weights"] == "average-last-5.safetensors"


def test_flags_beat_the_preset_which_beats_the_config_file(received, tmp_path):
    """A flag counts when given, even at its default value; an absent flag leaves the file's value."""
    config = tmp_path / "c.json"
    config.write_text('{"model": {"d_model": 64, "n_heads": 2, "dropout": 0.3}, '
                      '"train": {"lr": 0.01, "epochs": 3, "seed": 9}}')
    invoke("train", ["--config", str(config), "--preset", "tiny", "--dropout", "0.1", "--lr", "0.001"], tmp_path)
    model, train = received[ModelConfig], received[TrainConfig]
    assert (model.d_model, model.n_heads) == (128, 4)  # the preset over the file
    assert model.dropout == 0.1 and train.lr == 0.001  # flags at the default over the file
    assert (train.epochs, train.seed) == (3, 9)  # the file's, where no flag is given


def test_the_makefiles_demo_flags_still_parse(received, tmp_path):
    makefile = (ROOT / "Makefile").read_text()
    flags = re.search(r"^DEMO_TRAIN_FLAGS \?= (.*)$", makefile, re.MULTILINE).group(1).split()
    invoke("train", flags, tmp_path)
    train = received[TrainConfig]
    assert received[ModelConfig].d_model == 128 and (train.max_time, train.average_last) == (760.0, 5)


@pytest.mark.parametrize("value, fragments", [
    ("0.9", ["--betas takes 2 comma-separated values, FLOAT,FLOAT; got '0.9'"]),
    ("0.9,x", ["--betas takes 2", "'0.9,x'"]),
    ("nan,0.98", ["--betas must be a finite number, got nan"]),
    ("0.9,inf", ["--betas must be a finite number, got inf"]),
])
def test_bad_betas_are_one_error_line(value, fragments, received, tmp_path):
    result = runner.invoke(app, ["train", "--run", str(tmp_path / "r"), "--betas", value])
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message
    assert not received


HEAVY = ("torch", "datasets", "transformers", "sentencepiece", "sacrebleu", "matplotlib", "tensorboard")


def _every_command(command=None, path=()) -> list[list[str]]:
    """[name, ..., "--help"] for every command and group of the CLI, found by walking it."""
    command = command or typer.main.get_command(app)
    found = [[*path, "--help"]]
    for name, sub in getattr(command, "commands", {}).items():
        found += _every_command(sub, (*path, name))
    return found


EVERY_HELP = _every_command()


def test_every_command_is_walked():
    assert ["attention", "--help"] in EVERY_HELP and ["tokenizer", "train", "--help"] in EVERY_HELP
    assert len(EVERY_HELP) >= 12


def test_help_and_version_load_no_heavy_library():
    """`s2s --help` took 2-3 s when the CLI imported torch and datasets up front; it must stay fast.
    Every command's --help, and --version, in one process: none may import a heavy library."""
    check = ("import sys\n"
             "from typer.testing import CliRunner\n"
             "from cli.main import app\n"
             f"for args in {[['--version'], *EVERY_HELP]!r}:\n"
             "    result = CliRunner().invoke(app, args)\n"
             "    assert result.exit_code == 0, (args, result.output)\n"
             f"    loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
             "    assert not loaded, f\"s2s {' '.join(args)} imported {loaded}\"\n")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
