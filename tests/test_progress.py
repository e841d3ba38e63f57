"""Progress bars of `s2s translate -i FILE -o OUT` and `s2s eval -m`: on a terminal's stderr, never
on a pipe, and never in the output."""

import gzip
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from seq2seq.files.lines import ReadStats, count_lines, iter_lines, open_binary

S2S = [sys.executable, "-m", "cli.main"]
runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def run(args: list, stderr_on_terminal: bool, stdout_on_terminal: bool = False) -> tuple[int, bytes, bytes]:
    """Run s2s with stdout on a pipe (or with stderr, on the terminal) and stderr on a pseudo-terminal
    (or a pipe); (code, stdout, stderr)."""
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "120"}
    if not stderr_on_terminal:
        done = subprocess.run(S2S + [str(a) for a in args], capture_output=True, stdin=subprocess.DEVNULL,
                              env=env, cwd=ROOT, timeout=300)
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(S2S + [str(a) for a in args], stdout=follower if stdout_on_terminal else subprocess.PIPE,
                               stderr=follower,
                               stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    os.close(follower)
    err = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process is done with it
            break
        if not chunk:
            break
        err += chunk
    os.close(leader)
    out = b"" if stdout_on_terminal else process.stdout.read()
    return process.wait(timeout=300), out, err


@pytest.fixture(scope="module")
def source(tmp_path_factory, multi30k) -> Path:
    path = tmp_path_factory.mktemp("progress") / "val.en"
    with gzip.open(multi30k / "val.en.gz", "rt", encoding="utf-8") as f:
        path.write_text("".join(next(f) for _ in range(60)), encoding="utf-8")
    return path


def on_a_pipe(args: list) -> tuple[bytes, bytes]:
    """stdout and stderr of s2s run in this process, both on pipes (CliRunner's)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout_bytes, result.stderr_bytes


def test_translate_shows_a_bar_on_a_terminal_only(trained_run, source, tmp_path):
    args = ["translate", "-m", trained_run, "-i", source, "--device", "cpu", "--beam", "1", "--buffer-lines", "20"]
    code, out, err = run([*args, "-o", tmp_path / "bar.de"], stderr_on_terminal=True)
    assert code == 0, err
    assert out == b""
    assert b"60/60" in err and b"lines/s" in err and b"ETA" in err
    out, err = on_a_pipe([*args, "-o", tmp_path / "pipe.de"])
    assert b"lines/s" not in err and b"\x1b[" not in err, err
    assert (tmp_path / "bar.de").read_bytes() == (tmp_path / "pipe.de").read_bytes()
    assert (tmp_path / "bar.de").read_bytes().count(b"\n") == 60
    # Into a pipe, stdout holds the translations alone, whatever stderr shows.
    code, out, err = run(args, stderr_on_terminal=True)
    assert code == 0 and out == (tmp_path / "bar.de").read_bytes() and b"60/60" in err
    # With the translations on the terminal too, a bar would garble them: there is none.
    code, _, screen = run(args, stderr_on_terminal=True, stdout_on_terminal=True)
    assert code == 0 and b"lines/s" not in screen and screen.count(b"\n") >= 60


def test_eval_shows_a_bar_on_a_terminal_only(trained_run, source, tmp_path):
    args = ["eval", "-m", trained_run, "--src", source, "--ref", source, "--device", "cpu", "--beam", "1",
            "--json"]
    code, out, err = run(args, stderr_on_terminal=True)
    assert code == 0, err
    assert b"60/60" in err and b"lines/s" not in out
    piped, err = on_a_pipe(args)
    assert b"60/60" not in err and json.loads(piped) == json.loads(out)


@pytest.mark.parametrize("content", [b"", b"a\n", b"a", b"a\nb", b"a\n\n", b"\n", b"a\r\nb\r\n"])
@pytest.mark.parametrize("gz", [False, True])
def test_count_lines_counts_what_is_read(tmp_path, content, gz):
    path = tmp_path / ("in.gz" if gz else "in.txt")
    path.write_bytes(gzip.compress(content) if gz else content)
    with open_binary(path) as stream:
        assert count_lines(path) == len(list(iter_lines(stream, ReadStats())))
