"""`s2s serve`: the real server in a subprocess on a free port of 127.0.0.1, with a tiny model.

Concurrent clients get exactly their own lines, equal to what the library
translates offline; every bad request gets its status code without
disturbing the others; SIGTERM drains the requests in flight and exits 0;
start-up failures are one `error:` line.
"""

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import MULTI30K, ROOT

from seq2seq.config import DecodeConfig
from seq2seq.search.translator import Translator

pytest.importorskip("fastapi", reason="s2s serve needs the optional fastapi and uvicorn: pip install 's2s[serve]'")
pytest.importorskip("uvicorn", reason="s2s serve needs the optional fastapi and uvicorn: pip install 's2s[serve]'")

BEAM = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s2s(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


@contextmanager
def server(model: Path, *options: str):
    """A running `s2s serve` on a free port; yields (base URL, process). Stopped with SIGTERM."""
    port = free_port()
    process = subprocess.Popen(s2s("serve", "-m", str(model), "--port", str(port), "--device", "cpu", "--threads",
                                   "1", "--beam", str(BEAM), "--log-level", "warning", *options),
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the server exited with {process.returncode}: {process.stderr.read()}")
            try:
                if get(url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the server did not become healthy")
            time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        process.stdout.close()
        process.stderr.close()


def get(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, json.loads(response.read())


def post(url: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url + "/translate", data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), err.headers  # case-insensitive


@pytest.fixture(scope="module")
def sources() -> list[str]:
    with gzip.open(MULTI30K / "val.en.gz", "rt", encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(24)]
    # Empty lines, a line too long for the model (max_positions 64: it is split), odd text.
    return lines + ["", "   ", " ".join(lines[:8]), "caf\u00e9 \u2028 \ufffd dog"]


@pytest.fixture(scope="module", params=["torch", "ctranslate2"])
def model_folder(request, trained_run) -> Path:
    return trained_run if request.param == "torch" else request.getfixturevalue("exported_run")


def offline(model: Path, lines: list[str], beam: int = BEAM, prefixes: list[str] | None = None) -> list[str]:
    threads = torch.get_num_threads()
    try:
        return Translator.from_run(model, "cpu", DecodeConfig(beam=beam), threads=1).translate(lines, prefixes)
    finally:
        torch.set_num_threads(threads)


def test_concurrent_clients_get_exactly_their_own_lines(model_folder, sources):
    """16 clients x 20 requests of mixed sizes and settings: every answer is the offline translation."""
    expected = {BEAM: dict(zip(sources, offline(model_folder, sources))),
                1: dict(zip(sources, offline(model_folder, sources, beam=1)))}

    def client(number: int) -> list[str]:
        problems = []
        for i in range(20):
            size = (number + i) % 5  # 0 to 4 lines; a list of 0 lines is a valid request too
            lines = [sources[(number * 7 + i * 3 + j) % len(sources)] for j in range(size)]
            beam = 1 if (number + i) % 3 == 0 else None
            body = {"text": lines if size != 1 or i % 2 else lines[0]}
            if beam:
                body["beam"] = beam
            status, answer, _ = post(url, body)
            want = [expected[beam or BEAM][line] for line in lines]
            got = answer.get("translations")
            if isinstance(body["text"], str):
                want = want[0]
            if status != 200 or got != want:
                problems.append((number, i, status, body, got, want))
        return problems

    with server(model_folder, "--max-wait-ms", "20") as (url, _):
        with ThreadPoolExecutor(16) as pool:
            problems = [p for found in pool.map(client, range(16)) for p in found]
        assert not problems, problems[:3]
        status, info = get(url + "/info")
        assert status == 200 and 0 < info["batches"] < 320  # requests were batched together
        assert info["queued_lines"] == 0
        # What it computes in: the torch engine says it as training does, CTranslate2 by its compute type.
        assert info["model"]["precision"] in ("float32", "CTranslate2 float32 on cpu")


def test_prefix_and_nbest_requests(trained_run, sources):
    with server(trained_run) as (url, _):
        status, answer, _ = post(url, {"text": sources[0], "prefix": "Ein Mann"})
        assert status == 200 and answer["translations"] == offline(trained_run, sources[:1], prefixes=["Ein Mann"])[0]
        assert answer["translations"].startswith("Ein Mann")
        status, answer, _ = post(url, {"text": [sources[1], ""], "nbest": 2, "beam": 2})
        assert status == 200 and len(answer["translations"]) == 2
        best = answer["translations"][0]
        assert 1 <= len(best) <= 2 and [h["score"] for h in best] == sorted((h["score"] for h in best), reverse=True)
        assert answer["translations"][1] == [{"text": "", "score": 0.0, "logprob": 0.0}]
        assert best[0]["text"] == offline(trained_run, sources[1:2], beam=2)[0]
        status, answer, _ = post(url, {"text": "a lone \ud800 surrogate"})
        assert status == 200 and isinstance(answer["translations"], str)


def test_bad_requests_get_their_status_and_leave_the_server_working(trained_run, sources):
    long_prefix = " ".join(["Hund"] * 80)
    bad = {
        "more lines than --max-lines": ({"text": ["A dog."] * 9}, 413),
        "a body over --max-bytes": ({"text": "x" * 5000}, 413),
        "malformed JSON": (b'{"text": ', 422),
        "not JSON at all": (b"\xff\xfe", 422),
        "text of the wrong type": ({"text": 5}, 422),
        "a list holding a number": ({"text": ["a", 1]}, 422),
        "no text": ({"beam": 2}, 422),
        "an unknown field": ({"text": "a", "bean": 2}, 422),
        "beam 0": ({"text": "a", "beam": 0}, 422),
        "a beam wider than the vocabulary": ({"text": "a", "beam": 10 ** 6}, 422),
        "a beam that is a string": ({"text": "a", "beam": "5"}, 422),
        "nbest over the beam": ({"text": "a", "beam": 2, "nbest": 3}, 422),
        "a prefix list for one text": ({"text": "a", "prefix": ["b"]}, 422),
        "fewer prefixes than lines": ({"text": ["a", "b"], "prefix": ["c"]}, 422),
        "a prefix longer than any output": ({"text": "a", "prefix": long_prefix}, 422),
    }
    with server(trained_run, "--max-lines", "8", "--max-bytes", "4000") as (url, process):
        for name, (body, code) in bad.items():
            status, answer, _ = post(url, body)
            assert status == code, (name, status, answer)
            assert answer.get("detail"), name
        status, answer, _ = post(url, {"text": sources[:8]})  # at the limits: fine
        assert status == 200 and answer["translations"] == offline(trained_run, sources[:8])
        assert get(url + "/health")[0] == 200 and process.poll() is None


def test_a_full_queue_answers_503_with_retry_after(trained_run, sources):
    lines = [" ".join(sources[i:i + 3]) for i in range(8)]  # long lines: each batch takes a while
    with server(trained_run, "--max-lines", "8", "--max-queue-lines", "8", "--max-wait-ms", "50") as (url, _):
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: post(url, {"text": lines}), range(24)))
        busy = [a for a in answers if a[0] == 503]
        served = [a for a in answers if a[0] == 200]
        assert busy and served and len(busy) + len(served) == len(answers)
        assert all(headers.get("Retry-After") == "1" for _, _, headers in busy)
        expected = offline(trained_run, lines)
        assert all(answer["translations"] == expected for _, answer, _ in served)
        assert post(url, {"text": lines[0]})[:2] == (200, {"translations": expected[0]})


def test_sigterm_finishes_the_requests_in_flight_then_exits_0(trained_run, sources):
    lines = sources[:6]
    expected = offline(trained_run, lines)
    # A long wait keeps the requests queued, in flight, when SIGTERM comes.
    with server(trained_run, "--max-wait-ms", "3000", "--max-tokens", "100000") as (url, process):
        answers: list = []
        clients = [threading.Thread(target=lambda: answers.append(post(url, {"text": lines}))) for _ in range(6)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 30
        while get(url + "/info")[1]["queued_lines"] < 36 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        for client in clients:
            client.join(timeout=120)
        assert process.wait(timeout=60) == 0, process.stderr.read()
        assert [a[:2] for a in answers] == [(200, {"translations": expected})] * 6
        with pytest.raises(OSError):  # and it no longer listens
            get(url + "/health")


def one_error_line(args: list[str], env: dict | None = None) -> str:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.startswith("error:") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_start_up_failures_are_one_error_line(trained_run, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert f"cannot listen on 127.0.0.1:{port}" in one_error_line(s2s("serve", "-m", str(trained_run),
                                                                            "--port", port))
    (tmp_path / "empty").mkdir()
    free = str(free_port())
    assert "config.json" in one_error_line(s2s("serve", "-m", str(tmp_path / "empty"), "--port", free))
    assert "--max-queue-lines" in one_error_line(s2s("serve", "-m", str(trained_run), "--port", free, "--max-lines",
                                                     "10", "--max-queue-lines", "5"))
    assert "--port" in one_error_line(s2s("serve", "-m", str(trained_run), "--port", "70000"))
    # Without the extra: fastapi cannot be imported.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "fastapi.py").write_text("raise ImportError('No module named fastapi')\n")
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{ROOT}")
    assert "pip install 's2s[serve]'" in one_error_line(s2s("serve", "-m", str(trained_run), "--port", free), env)


def answers_on(address: str, port: int) -> bool:
    """Whether something accepts a TCP connection on address:port."""
    try:
        socket.create_connection((address, port), timeout=10).close()
        return True
    except OSError:
        return False


def test_the_default_bind_answers_this_machine_only(trained_run):
    """Without --host the server answers on 127.0.0.1 alone: not even on 127.0.0.2, another loopback
    address, which a server bound to every address (0.0.0.0) would answer."""
    with socket.socket() as other:  # the control: this system has 127.0.0.2, and it takes connections
        try:
            other.bind(("127.0.0.2", 0))
        except OSError:
            pytest.skip("this system has no loopback address 127.0.0.2")
        other.listen()
        assert answers_on("127.0.0.2", other.getsockname()[1])
    with server(trained_run) as (url, process):
        assert get(url + "/health")[0] == 200
        assert not answers_on("127.0.0.2", int(url.rsplit(":", 1)[1]))


def test_the_listening_socket_says_it_is_tcp():
    """asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose protocol is IPPROTO_TCP;
    without it each request on a kept-alive connection waits ~40 ms for a delayed ACK."""
    from cli.serve import listening_socket

    with listening_socket("127.0.0.1", free_port()) as sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_slow_and_vanished_clients_do_not_hold_up_the_others(trained_run, sources):
    expected = offline(trained_run, sources[:3])
    with server(trained_run) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        slow = socket.create_connection(("127.0.0.1", port))  # sends a tenth of its body, then nothing
        slow.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"text\": \"")
        for _ in range(3):  # clients that send a whole request and go away without reading the answer
            gone = socket.create_connection(("127.0.0.1", port))
            body = json.dumps({"text": sources[:5]}).encode()
            gone.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            gone.close()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda line: post(url, {"text": line}), sources[:3]))
        assert [a[:2] for a in answers] == [(200, {"translations": e}) for e in expected]
        slow.close()
        assert get(url + "/health")[0] == 200 and process.poll() is None
