"""Rule 1 on open files: no output lands on an input, whatever names it (issue 25).

A shell can hand a command one of its inputs as an output without naming
it: `-o /dev/fd/3 3<>in.txt`, `1<>in.txt`, `>> in.txt`. Every output, stdout
included, is compared by (device, inode) with every input and with every file
of the folders the command reads (seq2seq.files.reads). Each command runs here as
a real process, whose descriptors really are the input, and must refuse with
one error line, before it loads torch where it can, leaving every file as it
was. What is no input (a pipe, /dev/null, a FIFO, another file) is written.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import make_untrained_run, one_error_line, write_slice
from typer.testing import CliRunner

from cli.main import app
from seq2seq.errors import ConfigError
from seq2seq.files.reads import Reads, refuse_clobbering, refuse_stdout_clobbering

S2S = Path(sys.executable).parent / "s2s"
LINES = "a dog runs\n\ntwo men\n"

# The ways a shell gives a command a file as its output without naming it as a path.
PROC_FD, DEV_FD, STDOUT_RDWR, STDOUT_APPEND = "-o /proc/self/fd/N", "-o /dev/fd/N", "1<>file", ">>file"
NAMINGS = (PROC_FD, DEV_FD, STDOUT_RDWR, STDOUT_APPEND)
STDOUT_NAMINGS = (STDOUT_RDWR, STDOUT_APPEND)

RUN_FILES = {"run config.json": "run/config.json", "run checkpoints/last.json": "run/checkpoints/last.json"}

# command: (arguments, arguments when stdout is the output, {what: file it reads}, namings,
#           the namings it refuses only after loading torch)
# Paths are relative to the folder the commands run in (`world`).
COMMANDS = {
    "translate": (["translate", "-m", "run", "-i", "in.txt", "--prefix-file", "prefix.txt", "--device", "cpu"], [],
                  {"the input file": "in.txt", "the --prefix-file": "prefix.txt", **RUN_FILES}, NAMINGS, ()),
    "eval --model": (["eval", "-m", "run", "--src", "src.en", "--ref", "ref.de", "--ref", "ref2.de",
                      "--device", "cpu"], [],
                     {"the source file": "src.en", "the reference": "ref.de", "the second reference": "ref2.de",
                      **RUN_FILES}, NAMINGS, ()),
    "eval --hyp": (["eval", "--hyp", "hyp.de", "--ref", "ref.de"], [],
                   {"the hypotheses": "hyp.de", "the reference": "ref.de"}, STDOUT_NAMINGS, ()),
    "tokenizer train": (["tokenizer", "train", "--corpus", "corpus/c", "--vocab-size", "100"], ["-o", "tok"],
                        {"the corpus en": "corpus/c.en", "the corpus de": "corpus/c.de"}, STDOUT_NAMINGS, ()),
    "average": (["average", "-m", "run", "--last", "1"], [], RUN_FILES, STDOUT_NAMINGS, ()),
    "export": (["export", "-m", "run"], ["-o", "exported"], RUN_FILES, STDOUT_NAMINGS, ()),
    "info": (["info", "run"], [], RUN_FILES, STDOUT_NAMINGS, ()),
    "plot": (["plot", "run", "run2"], ["-o", "curves.png"],
             {**RUN_FILES, "the second run's metrics.jsonl": "run2/metrics.jsonl"}, NAMINGS,
             # seq2seq.inspection.curves checks -o, and imports seq2seq.runs.run_dir (torch) for a file name
             (PROC_FD, DEV_FD)),
    "attention": (["attention", "-m", "run", "a dog", "--device", "cpu"], [], RUN_FILES, NAMINGS, ()),
    "serve": (["serve", "-m", "run"], [], RUN_FILES, STDOUT_NAMINGS, ()),
}

# Training imports torch to learn what it reads (seq2seq.training.trainer.training_reads): each start costs
# seconds, so each of its inputs is tried with one naming, and each naming with some input.
TRAIN = ["train", "--train", "corpus/c", "--valid", "", "--config", "run/config.json", "--tokenizer", "tok-in",
         "--run", "new-run", "--device", "cpu"]
RESUME = ["train", "--run", "run", "--resume", "--device", "cpu"]
TRAIN_CASES = {
    "train corpus 1<>": (TRAIN, "corpus/c.en", STDOUT_RDWR, "the training corpus"),
    "train corpus >>": (TRAIN, "corpus/c.de", STDOUT_APPEND, "the training corpus"),
    "train --config >>": (TRAIN, "run/config.json", STDOUT_APPEND, "the --config file"),
    "train --tokenizer 1<>": (TRAIN, "tok-in/tokenizer.model", STDOUT_RDWR, "the --tokenizer folder"),
    "train --resume >>": (RESUME, "run/checkpoints/last.json", STDOUT_APPEND, "the resumed run's checkpoints folder"),
    "train --resume 1<>": (RESUME, "run/metrics.jsonl", STDOUT_RDWR, "the resumed run's run/metrics.jsonl"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A folder with everything the commands read: two runs, text files and a corpus."""
    folder = tmp_path_factory.mktemp("world")
    run = make_untrained_run(folder / "run")
    shutil.rmtree(run / "corpus")  # make_untrained_run's own; the commands read corpus/ below
    (run / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 5.0}\n')
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.json").write_text('{"dir": "step_00000001"}\n')
    shutil.copytree(run, folder / "run2")
    (folder / "tok-in").mkdir()
    shutil.copy(run / "tokenizer.model", folder / "tok-in" / "tokenizer.model")
    for name in ("in.txt", "prefix.txt", "src.en", "ref.de", "ref2.de", "hyp.de"):
        (folder / name).write_text(LINES)
    write_slice(folder / "corpus", "val", 50, "c")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def s2s(args: list[str], cwd: Path, log_imports: bool = False, **popen) -> subprocess.CompletedProcess:
    """The installed `s2s` as a process; `log_imports`: with Python's import log on stderr."""
    env = {**os.environ, **({"PYTHONPROFILEIMPORTTIME": "1"} if log_imports else {})}
    popen.setdefault("stdout", subprocess.PIPE)
    return subprocess.run([str(S2S), *args], cwd=cwd, env=env, stderr=subprocess.PIPE, timeout=120, **popen)


def s2s_onto(args: list[str], stdout_args: list[str], target: Path, naming: str, cwd: Path, log_imports: bool):
    """`s2s ARGS` whose output is the open file `target`, given as `naming` says."""
    if naming in (PROC_FD, DEV_FD):
        fd = os.open(target, os.O_RDWR)  # no truncation: what an output does to it is the command's doing
        given = [*args, "-o", naming.removeprefix("-o ").replace("N", str(fd))]
        popen = {"pass_fds": (fd,)}
    else:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND if naming == STDOUT_APPEND else os.O_RDWR)
        given, popen = [*args, *stdout_args], {"stdout": fd}
    try:
        return s2s(given, cwd, log_imports, **popen)
    finally:
        os.close(fd)


def refused(result: subprocess.CompletedProcess, loads_torch: bool, *fragments: str) -> str:
    """The error line of a process that failed as every s2s failure must; unless `loads_torch`,
    its import log must show that it refused before importing torch."""
    lines = result.stderr.decode("utf-8", "replace").splitlines()
    imported = {line.rpartition("|")[2].strip() for line in lines if line.startswith("import time:")}
    said = [line for line in lines if not line.startswith("import time:")]
    assert result.returncode == 1, (result.returncode, said)
    assert len(said) == 1 and said[0].startswith("error:"), said
    for fragment in fragments:
        assert fragment in said[0], said[0]
    if not loads_torch:
        assert "__future__" in imported, "no import log"
        assert "torch" not in imported, f"refused only after loading torch: {said[0]}"
    return said[0]


@pytest.mark.parametrize("command, what, naming", [
    pytest.param(command, what, naming, id=f"{command}-{what}-{naming}")
    for command, (_, _, reads, namings, _) in COMMANDS.items() for what in reads for naming in namings])
def test_no_command_writes_onto_what_it_reads_however_the_output_is_given(world, command, what, naming):
    args, stdout_args, reads, _, torch_first = COMMANDS[command]
    target = world / reads[what]
    before = snapshot(world)
    torch_first = naming in torch_first
    message = refused(s2s_onto(args, stdout_args, target, naming, world, not torch_first), torch_first,
                      reads[what], "refusing to write over it")
    assert message.startswith("error: stdout is") == (naming in STDOUT_NAMINGS)
    assert snapshot(world) == before


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_training_never_writes_onto_what_it_reads(world, case):
    args, target, naming, label = TRAIN_CASES[case]
    before = snapshot(world)
    refused(s2s_onto(args, [], world / target, naming, world, False), True, "stdout is", label, target)
    assert snapshot(world) == before
    assert not (world / "new-run").exists()


def test_stdout_on_the_file_stdin_reads_is_refused(world):
    """`s2s translate < in.txt >> in.txt` would translate its own output for ever."""
    before = snapshot(world)
    with open(world / "in.txt", "rb") as source, open(world / "in.txt", "ab") as sink:
        message = refused(s2s(["translate", "-m", "run", "--device", "cpu"], world, True, stdin=source, stdout=sink),
                          False, "stdout is the input", "stdin")
    assert "refusing to write over it" in message
    assert snapshot(world) == before


# ---------------------------------------------------------------------------
# What is not an input stays allowed.

def translate_args(*more: str) -> list[str]:
    return ["translate", "-m", "run", "-i", "in.txt", "--device", "cpu", *more]


def succeeded(result: subprocess.CompletedProcess) -> None:
    said = [line for line in result.stderr.decode().splitlines() if not line.startswith("import time:")]
    assert result.returncode == 0, said
    assert not any(line.startswith("error:") for line in said), said


def test_stdout_to_a_file_that_is_no_input_is_written(world, tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "wb") as sink:
        succeeded(s2s(translate_args(), world, stdout=sink))
    assert len(out.read_text().splitlines()) == len(LINES.splitlines())


def test_stdin_and_an_appended_stdout_that_are_different_files(world, tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("kept\n")
    with open(world / "in.txt", "rb") as source, open(out, "ab") as sink:
        succeeded(s2s(["translate", "-m", "run", "--device", "cpu"], world, stdin=source, stdout=sink))
    assert out.read_text().splitlines()[0] == "kept"
    assert len(out.read_text().splitlines()) == 1 + len(LINES.splitlines())


def test_stdout_to_a_pipe_and_output_to_dev_null(world):
    piped = s2s(translate_args(), world)
    succeeded(piped)
    assert len(piped.stdout.decode().splitlines()) == len(LINES.splitlines())
    nulled = s2s(translate_args("-o", "/dev/null"), world)
    succeeded(nulled)
    assert nulled.stdout == b""


def test_output_to_a_descriptor_of_a_pipe(world):
    """What bash's `-o >(gzip > x.gz)` gives: /dev/fd/N, a pipe's write end."""
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader:
        try:
            process = subprocess.Popen([str(S2S), *translate_args("-o", f"/dev/fd/{write_end}")], cwd=world,
                                       pass_fds=(write_end,), stderr=subprocess.PIPE)
        finally:
            os.close(write_end)  # the child's copy is the pipe's only writer: EOF when it exits
        written = reader.read()
        assert process.wait(timeout=300) == 0, process.stderr.read()
        process.stderr.close()
    assert len(written.decode().splitlines()) == len(LINES.splitlines())


def test_output_to_a_fifo(world, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = s2s(translate_args("-o", str(fifo)), world)
    with contextlib.suppress(OSError):  # if the command never opened the FIFO, the reader still waits for it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    reader.join(timeout=60)
    succeeded(result)
    assert len(received[0].decode().splitlines()) == len(LINES.splitlines())


# ---------------------------------------------------------------------------
# The library: every file of a folder, every input, through each name of an open file.

@pytest.fixture
def folder_and_file(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "run" / "checkpoints" / "step_1").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "checkpoints/last.json", "checkpoints/step_1/state.json"):
        (tmp_path / "run" / name).write_text(name)
    (tmp_path / "in.txt").write_text(LINES)
    return tmp_path / "run", tmp_path / "in.txt"


FOLDER_FILES = ["config.json", "model.safetensors", "checkpoints/last.json", "checkpoints/step_1/state.json"]


@pytest.mark.parametrize("name", ["in.txt", *FOLDER_FILES])
@pytest.mark.parametrize("descriptor_path", ["/proc/self/fd/{}", "/dev/fd/{}"])
def test_a_descriptor_output_on_any_file_read_is_refused(folder_and_file, name, descriptor_path):
    run, source = folder_and_file
    reads = Reads().file("the input file", source).folder("the run directory", run)
    target = source if name == "in.txt" else run / name
    fd = os.open(target, os.O_RDWR)
    try:
        with pytest.raises(ConfigError, match="refusing to write over it") as err:
            refuse_clobbering("--output", descriptor_path.format(fd), reads)
    finally:
        os.close(fd)
    assert str(target) in str(err.value)


@pytest.mark.parametrize("name", ["in.txt", *FOLDER_FILES])
@pytest.mark.parametrize("mode", ["r+b", "ab"])
def test_stdout_on_any_file_read_is_refused(folder_and_file, monkeypatch, name, mode):
    run, source = folder_and_file
    reads = Reads().file("the input file", source).folder("the run directory", run)
    target = source if name == "in.txt" else run / name
    with open(target, mode) as stream:
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(stream))
        for check in (lambda: refuse_stdout_clobbering(reads), lambda: refuse_clobbering("-o", "-", reads)):
            with pytest.raises(ConfigError, match=f"^stdout is .*{target.name}.*refusing to write over it"):
                check()
        monkeypatch.undo()


def test_a_symlink_in_a_folder_read_stands_for_the_file_it_points_at(folder_and_file, tmp_path, monkeypatch):
    run, _ = folder_and_file
    elsewhere = tmp_path / "weights.safetensors"
    elsewhere.write_text("weights")
    (run / "average.safetensors").symlink_to(elsewhere)
    with open(elsewhere, "ab") as stream:
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(stream))
        with pytest.raises(ConfigError, match="average.safetensors, a file of the run directory"):
            refuse_stdout_clobbering(Reads().folder("the run directory", run))
        monkeypatch.undo()


def test_stdout_on_stdin_is_refused_only_when_stdin_is_read(folder_and_file, monkeypatch):
    _, source = folder_and_file
    with open(source, "rb") as stdin, open(source, "ab") as stdout:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(stdout))
        refuse_stdout_clobbering(Reads())  # stdin is not read: nothing is written over
        with pytest.raises(ConfigError, match="stdout is the input, the file on stdin"):
            refuse_stdout_clobbering(Reads().standard_input("the input"))
        monkeypatch.undo()


def test_what_is_no_input_passes(folder_and_file, tmp_path, monkeypatch):
    run, source = folder_and_file
    reads = Reads().file("the input file", source).folder("the run directory", run).standard_input("the input")
    read_end, write_end = os.pipe()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    other = tmp_path / "other.txt"
    other.write_text("")
    try:
        for output in ("/dev/null", fifo, f"/dev/fd/{write_end}", f"/proc/self/fd/{write_end}", other,
                       tmp_path / "new.txt"):
            refuse_clobbering("--output", output, reads)
        with open(os.devnull, "w") as null, open(other, "a") as regular, os.fdopen(os.dup(write_end), "w") as pipe:
            closed = open(other)
            closed.close()
            for stdout in (io.StringIO(), None, closed, null, regular, pipe):
                monkeypatch.setattr(sys, "stdout", stdout)
                refuse_stdout_clobbering(reads)
            monkeypatch.undo()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_an_output_descriptor_that_is_not_open_is_refused_up_front(world):
    fd = 1000
    with pytest.raises(OSError):
        os.fstat(fd)
    result = CliRunner().invoke(app, ["translate", "-m", str(world / "run"), "-i", str(world / "in.txt"),
                                      "-o", f"/dev/fd/{fd}"])
    assert one_error_line(result) == f"error: --output /dev/fd/{fd}: no such descriptor is open"
