"""An exported folder checks itself: every damage is refused by every command that opens the folder, with one
`error:` line naming the damaged file and before anything is translated or a server says it is ready; older
exports, without hashes, are checked by their structure; `s2s export -o` refuses every odd target in one line;
a folder whose name is not UTF-8 works for every command."""

import pytest

pytest.importorskip("ctranslate2", reason="exported folders need the optional ctranslate2 package: "
                                          "pip install 's2s[ctranslate2]'")

import gzip  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from helpers import MULTI30K, one_error_line, write_slice  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cli.main import app  # noqa: E402
from seq2seq.config import DecodeConfig  # noqa: E402
from seq2seq.errors import RunDirError, S2SError  # noqa: E402
from seq2seq.inspection.summary import describe  # noqa: E402
from seq2seq.runs.ctranslate2_export import export_ctranslate2  # noqa: E402
from seq2seq.runs.exported_folder import EXPORT_FILE, EXPORT_FORMAT_VERSION  # noqa: E402
from seq2seq.search.translator import Translator  # noqa: E402

runner = CliRunner()
SENTENCES = 5
NOT_UTF8 = os.fsdecode(b"m\xff")


def serving():
    """tests/test_serve.py's helpers for a real server; that module skips where fastapi or uvicorn is missing."""
    import test_serve

    return test_serve


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    """A few validation sentences, source.en and reference.de."""
    folder = tmp_path_factory.mktemp("texts")
    for lang, name in (("en", "source.en"), ("de", "reference.de")):
        with gzip.open(MULTI30K / f"val.{lang}.gz", "rt", encoding="utf-8") as f:
            (folder / name).write_text("".join(next(f) for _ in range(SENTENCES)), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def other_tokenizer(exported_run, tmp_path_factory) -> Path:
    """A real sentencepiece model with as many pieces as the export's, trained on other sentences."""
    from seq2seq.data.corpora import load_corpus
    from seq2seq.data.tokenizer import train_tokenizer

    pieces = len(json.loads((exported_run / "shared_vocabulary.json").read_text(encoding="utf-8")))
    folder = tmp_path_factory.mktemp("other-tokenizer")
    corpus = load_corpus(write_slice(folder / "corpus", "val", 600), "en", "de")
    tokenizer = train_tokenizer(corpus, folder, vocab_size=pieces).src
    assert tokenizer.vocab_size == pieces
    assert tokenizer.sha256 != hashlib.sha256((exported_run / "tokenizer.model").read_bytes()).hexdigest()
    return tokenizer.path


def cut_vocabulary(folder: Path, other_tokenizer: Path) -> None:
    path = folder / "shared_vocabulary.json"
    path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8"))[:100]), encoding="utf-8")


def swap_tokenizer(folder: Path, other_tokenizer: Path) -> None:
    shutil.copyfile(other_tokenizer, folder / "tokenizer.model")


def zero_model_bytes(folder: Path, other_tokenizer: Path) -> None:
    path = folder / "model.bin"
    with open(path, "r+b") as f:  # a block in the middle of the weights: the size and the header stay right
        f.seek(path.stat().st_size // 2)
        f.write(bytes(4096))


def truncate_model(folder: Path, other_tokenizer: Path) -> None:
    path = folder / "model.bin"
    os.truncate(path, path.stat().st_size // 2)


def remover(name: str):
    def remove(folder: Path, other_tokenizer: Path) -> None:
        (folder / name).unlink()
    return remove


# Each damage, and the file its error line must name.
DAMAGES = {
    "tokenizer swapped for another": ("tokenizer.model", swap_tokenizer),
    "vocabulary cut to 100 pieces": ("shared_vocabulary.json", cut_vocabulary),
    "model.bin bytes zeroed": ("model.bin", zero_model_bytes),
    "model.bin truncated": ("model.bin", truncate_model),
    **{f"{name} missing": (name, remover(name)) for name in ("model.bin", "config.json", "shared_vocabulary.json",
                                                             "tokenizer.model", EXPORT_FILE)},
}


def damaged_copy(exported_run: Path, folder: Path, damage: str, other_tokenizer: Path) -> Path:
    shutil.copytree(exported_run, folder)
    DAMAGES[damage][1](folder, other_tokenizer)
    return folder


def command_args(command: str, folder: Path, texts: Path, output: Path) -> list[str]:
    """The arguments with which `command` opens the model folder `folder`."""
    source, reference = str(texts / "source.en"), str(texts / "reference.de")
    return {"translate": ["translate", "-m", str(folder), "-i", source, "-o", str(output), "--device", "cpu"],
            "eval": ["eval", "-m", str(folder), "--src", source, "--ref", reference, "-o", str(output), "--json",
                     "--device", "cpu"],
            "info": ["info", str(folder), "--json"],
            "serve": ["serve", "-m", str(folder), "--device", "cpu", "--log-level", "warning"]}[command]


def refusal(command: str, folder: Path, texts: Path, output: Path) -> str:
    """The one error line with which `command` refuses `folder`; a server must exit without ever listening."""
    args = command_args(command, folder, texts, output)
    if command == "serve":
        serve = serving()
        return serve.one_error_line(serve.s2s(*args, "--port", str(serve.free_port())))
    return one_error_line(runner.invoke(app, args))


def test_every_file_the_export_wrote_is_recorded_with_its_hash(exported_run):
    info = json.loads((exported_run / EXPORT_FILE).read_text(encoding="utf-8"))
    assert info["format_version"] == EXPORT_FORMAT_VERSION == 2
    files = {path.name for path in exported_run.iterdir()} - {EXPORT_FILE}
    assert files == {"model.bin", "config.json", "shared_vocabulary.json", "tokenizer.model"}
    assert info["sha256"] == {name: hashlib.sha256((exported_run / name).read_bytes()).hexdigest()
                              for name in files}


@pytest.mark.parametrize("command", ["translate", "eval", "info", "serve"])
@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_export_is_refused_naming_the_file(exported_run, other_tokenizer, texts, tmp_path, damage,
                                                      command):
    folder = damaged_copy(exported_run, tmp_path / "export", damage, other_tokenizer)
    message = refusal(command, folder, texts, tmp_path / "out.txt")
    assert str(folder / DAMAGES[damage][0]) in message, message
    assert "the exported folder is damaged: export the run again" in message, message
    assert not (tmp_path / "out.txt").exists()  # refused before anything was written


def as_format_1(folder: Path, keep_run_hashes: bool = True) -> None:
    """Make `folder` an export as written before the hashes: format version 1, no "sha256"."""
    path = folder / EXPORT_FILE
    info = json.loads(path.read_text(encoding="utf-8"))
    del info["sha256"]
    info["format_version"] = 1
    if not keep_run_hashes:
        info["run_config"]["tokenizer_sha256"] = {}
    path.write_text(json.dumps(info), encoding="utf-8")


def test_an_export_without_hashes_still_runs_and_translates_the_same(exported_run, texts, tmp_path):
    shutil.copytree(exported_run, tmp_path / "old")
    as_format_1(tmp_path / "old")
    lines = (texts / "source.en").read_text(encoding="utf-8").splitlines()
    cfg = DecodeConfig(beam=2)
    assert (Translator.from_run(tmp_path / "old", "cpu", cfg, threads=1).translate(lines)
            == Translator.from_run(exported_run, "cpu", cfg, threads=1).translate(lines))
    assert runner.invoke(app, ["info", str(tmp_path / "old"), "--json"]).exit_code == 0


# What the structure of an export without hashes still shows, and the file each error names.
FORMAT_1_DAMAGES = {
    "tokenizer swapped for another": ("tokenizer.model", "differs from the one recorded"),
    "vocabulary cut to 100 pieces": ("shared_vocabulary.json", "holds 100 pieces but the model's source embeddings"),
    "model.bin truncated": ("model.bin", "CTranslate2 cannot load"),
    "config.json missing": ("config.json", "missing"),
    "tokenizer.model missing": ("tokenizer.model", "missing"),
}


@pytest.mark.parametrize("damage", FORMAT_1_DAMAGES)
def test_an_export_without_hashes_is_checked_by_its_structure(exported_run, other_tokenizer, texts, tmp_path,
                                                              damage):
    folder = damaged_copy(exported_run, tmp_path / "old", damage, other_tokenizer)
    as_format_1(folder)
    name, fragment = FORMAT_1_DAMAGES[damage]
    message = refusal("translate", folder, texts, tmp_path / "out.txt")
    assert f"{folder / name}: " in message and fragment in message, message


def test_without_any_hash_a_swapped_tokenizer_is_found_by_its_pieces(exported_run, other_tokenizer, texts,
                                                                     tmp_path):
    folder = damaged_copy(exported_run, tmp_path / "old", "tokenizer swapped for another", other_tokenizer)
    as_format_1(folder, keep_run_hashes=False)
    for command in ("translate", "info"):
        message = refusal(command, folder, texts, tmp_path / "out.txt")
        assert "its pieces are not those of the source tokenizer, tokenizer.model" in message, message


@pytest.mark.parametrize("edit, fragment", [
    (lambda info: info.update(format_version=3), "format version 3 is not supported"),
    (lambda info: info["sha256"].pop("model.bin"), "records no sha256 for model.bin"),
    (lambda info: info["sha256"].update({"../model.bin": "0" * 64}), "\"sha256\" must map file names"),
    (lambda info: info.update(tokenizer={"src": "/etc/passwd", "tgt": "tokenizer.model"}), "\"tokenizer\" must name"),
    (lambda info: info["run_config"]["model"].update(d_model="big"), "d_model"),
])
def test_a_damaged_description_is_refused_naming_it(exported_run, tmp_path, edit, fragment):
    folder = tmp_path / "export"
    shutil.copytree(exported_run, folder)
    info = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8"))
    edit(info)
    (folder / EXPORT_FILE).write_text(json.dumps(info), encoding="utf-8")
    for open_folder in (lambda: Translator.from_run(folder, "cpu", DecodeConfig()), lambda: describe(folder)):
        with pytest.raises(RunDirError) as refused:
            open_folder()
        assert str(folder / EXPORT_FILE) in str(refused.value) and fragment in str(refused.value)


def odd_targets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Output folders `s2s export` must refuse, made in `tmp_path`, with what the refusal must say."""
    (tmp_path / "loopA").symlink_to(tmp_path / "loopB")
    (tmp_path / "loopB").symlink_to(tmp_path / "loopA")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("mine")
    (tmp_path / "to-a-file").symlink_to(tmp_path / "a-file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    return {
        "a symlink loop": (tmp_path / "loopA", "runs into a symlink loop"),
        "a folder in a symlink loop": (tmp_path / "loopA" / "export", "runs into a symlink loop"),
        "a dangling symlink": (tmp_path / "dangling", "is a dangling symlink"),
        "a folder under a dangling symlink": (tmp_path / "dangling" / "export",
                                              f"{tmp_path / 'dangling'} is a dangling symlink"),
        "a symlink to a file": (tmp_path / "to-a-file", "exists and is not a folder"),
        "a file": (tmp_path / "a-file", "exists and is not a folder"),
        "a path under a file": (tmp_path / "a-file" / "export", f"{tmp_path / 'a-file'} is a file, not a folder"),
        "a path under a symlink to a file": (tmp_path / "to-a-file" / "deeper" / "export",
                                             f"{tmp_path / 'to-a-file'} is a file, not a folder"),
        "a folder that is not empty": (tmp_path / "full", "already exists and is not empty"),
        # Root ignores permission bits, but nobody can make a folder in /proc.
        "a place no folder can be made": (Path("/proc") / f"s2s-export-{os.getpid()}", "cannot be written"),
    }


TARGETS = ["a symlink loop", "a folder in a symlink loop", "a dangling symlink", "a folder under a dangling symlink",
           "a symlink to a file", "a file", "a path under a file", "a path under a symlink to a file",
           "a folder that is not empty", "a place no folder can be made"]


@pytest.mark.parametrize("target", TARGETS)
def test_odd_export_targets_are_one_error_line(trained_run, tmp_path, target):
    output, fragment = odd_targets(tmp_path)[target]
    before = sorted(path.name for path in tmp_path.rglob("*"))
    message = one_error_line(runner.invoke(app, ["export", "-m", str(trained_run), "-o", str(output)]))
    assert message.startswith(f"error: --output {output}") and fragment in message, message
    assert sorted(path.name for path in tmp_path.rglob("*")) == before  # nothing made, nothing left behind
    assert (tmp_path / "a-file").read_text() == "mine"
    with pytest.raises(S2SError, match=f"^output_dir {re.escape(str(output))}: "):  # the library's own name
        export_ctranslate2(trained_run, output)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its permission bits")
def test_a_folder_without_write_permission_is_one_error_line(trained_run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    message = one_error_line(runner.invoke(app, ["export", "-m", str(trained_run), "-o", str(locked / "export")]))
    assert str(locked / "export") in message and "Permission denied" in message, message
    assert list(locked.iterdir()) == []


def test_a_folder_name_that_is_not_utf8_works_for_every_command(trained_run, exported_run, texts, tmp_path):
    folder = tmp_path / NOT_UTF8
    done = runner.invoke(app, ["export", "-m", str(trained_run), "-o", str(folder)])
    assert done.exit_code == 0, done.output
    outputs = {}
    for model in (exported_run, folder):
        for command in ("translate", "eval"):
            output = tmp_path / f"{command}-{model == folder}.txt"
            done = runner.invoke(app, command_args(command, model, texts, output))
            assert done.exit_code == 0, done.output
            scores = json.loads(done.stdout)["bleu"] if command == "eval" else None
            outputs[command, model] = (output.read_bytes(), scores)
    for command in ("translate", "eval"):
        assert outputs[command, folder] == outputs[command, exported_run] and outputs[command, folder][0]
    done = runner.invoke(app, command_args("info", folder, texts, tmp_path / "unused"))
    assert done.exit_code == 0 and json.loads(done.stdout)["kind"] == "exported (CTranslate2)", done.output
    serve = serving()
    lines = (texts / "source.en").read_text(encoding="utf-8").splitlines()
    with serve.server(folder) as (url, _):
        status, answer, _ = serve.post(url, {"text": lines})
    assert (status, answer) == (200, {"translations": serve.offline(exported_run, lines)})


def test_a_damaged_folder_whose_name_is_not_utf8_is_one_error_line(exported_run, other_tokenizer, texts, tmp_path):
    folder = damaged_copy(exported_run, tmp_path / NOT_UTF8, "model.bin truncated", other_tokenizer)
    for command in ("translate", "info", "serve"):
        message = refusal(command, folder, texts, tmp_path / "out.txt")
        assert "model.bin: not the file `s2s export` wrote" in message, message
