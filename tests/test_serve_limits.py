"""`s2s serve` always answers and always stops (issue 25): the real server, on 127.0.0.1, with an
untrained model that reads up to 1023 tokens and writes as many (its outputs run to the length
limit, so every batch costs what a long one can).

JSON that Python reads and JSON cannot hold (NaN, Infinity) and nesting too deep to parse are
422, never 500; a line or a request too large to translate without holding up the others is 413
at once; a large request is spread over batches that small ones share; a request past its
deadline is 503 and leaves the queue; connections that stall are closed; and SIGTERM or Ctrl-C
stops the server within its shutdown deadline, whatever is in flight.
"""

import asyncio
import json
import selectors
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import make_untrained_run, one_error_line
from test_serve import get, post, server
from typer.testing import CliRunner

from seq2seq.config import DecodeConfig
from seq2seq.search.translator import Translator

pytest.importorskip("fastapi", reason="s2s serve needs the optional fastapi and uvicorn: pip install 's2s[serve]'")
pytest.importorskip("uvicorn", reason="s2s serve needs the optional fastapi and uvicorn: pip install 's2s[serve]'")

LONG_LINE = "dog " * 990  # 991 source tokens with its EOS: two make a batch of the shared server
READ_TIMEOUT = 1.5
KEEP_ALIVE = 0.5


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> Path:
    return make_untrained_run(tmp_path_factory.mktemp("serve-limits") / "run", max_positions=1024)


@pytest.fixture(scope="module")
def shared(long_run):
    """One server for the cases that cannot disturb each other: (base URL, port, process)."""
    with server(long_run, "--max-tokens", "2000", "--max-request-tokens", "40000", "--max-lines", "64",
                "--read-timeout-s", str(READ_TIMEOUT), "--keep-alive-s", str(KEEP_ALIVE)) as (url, process):
        yield url, int(url.rsplit(":", 1)[1]), process


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def raw_post(port: int, body: bytes) -> tuple[int, dict]:
    """POST `body` as it is (urllib would refuse NaN only when it writes JSON itself)."""
    with connect(port) as sock:
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = read_all(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def closed_within(sockets: list[socket.socket], seconds: float) -> list[bytes]:
    """What each socket received before the server closed it; fails if any is still open after `seconds`."""
    received = {sock: b"" for sock in sockets}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_ones, deadline = len(sockets), time.monotonic() + seconds
        while open_ones and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=deadline - time.monotonic()):
                try:
                    chunk = key.fileobj.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                received[key.fileobj] += chunk
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_ones -= 1
    assert open_ones == 0, f"{open_ones} of {len(sockets)} connections still open after {seconds} s"
    return [received[sock] for sock in sockets]


# ---------------------------------------------------------------------------
# JSON that must be 422, never 500.

@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("field", ["beam", "nbest"])
def test_non_finite_numbers_are_422(shared, field, literal):
    url, port, process = shared
    status, answer = raw_post(port, b'{"text": "a", "%s": %s}' % (field.encode(), literal.encode()))
    assert status == 422 and literal in answer["detail"], answer
    assert process.poll() is None


@pytest.mark.parametrize("body", [
    b"[" * 50000 + b"]" * 50000,
    b'{"text": ' + b"[" * 50000 + b"]" * 50000 + b"}",
    b'{"a":' * 50000 + b"1" + b"}" * 50000,
], ids=["an array", "text an array", "an object"])
def test_nesting_too_deep_to_parse_is_422(shared, body):
    status, answer = raw_post(shared[1], body)
    assert (status, answer) == (422, {"detail": "the body nests arrays or objects too deeply"})


def test_nesting_that_parses_is_refused_without_quoting_it(shared):
    """Deep, but within what json parses: the 422 names the field, and does not echo the value."""
    status, answer = raw_post(shared[1], b'{"text": ' + b"[" * 900 + b"]" * 900 + b"}")
    assert status == 422 and all(error["loc"][0] == "text" and "input" not in error for error in answer["detail"])


# ---------------------------------------------------------------------------
# Size: what one request may cost.

def test_a_900_kb_line_is_refused_at_once_and_the_server_goes_on(shared):
    url, port, process = shared
    start = time.monotonic()
    status, answer, _ = post(url, {"text": "dog " * 220000})
    assert status == 413 and "220001 source tokens" in answer["detail"] and "(2000)" in answer["detail"]
    assert time.monotonic() - start < 10
    assert post(url, {"text": "A dog."})[0] == 200 and get(url + "/health")[0] == 200


def test_a_request_over_max_request_tokens_is_413(shared):
    status, answer, _ = post(shared[0], {"text": [LONG_LINE] * 41})  # 41 x 991 tokens
    assert status == 413 and "40631 source tokens; at most 40000" in answer["detail"], answer


def test_a_large_request_does_not_hold_up_a_small_one_or_health(shared, long_run):
    """12 long lines take 6 batches; a short request sent meanwhile shares the next one."""
    url, _, _ = shared
    big: list = []
    client = threading.Thread(target=lambda: big.append(post(url, {"text": [LONG_LINE] * 12})))
    start = time.monotonic()
    client.start()
    deadline = time.monotonic() + 60
    while not get(url + "/info")[1]["translating"] and time.monotonic() < deadline:
        time.sleep(0.02)
    before = get(url + "/info")[1]["batches"]
    health_start = time.monotonic()
    assert get(url + "/health")[0] == 200
    health_took = time.monotonic() - health_start
    small_start = time.monotonic()
    small = post(url, {"text": "A dog runs."})
    small_took = time.monotonic() - small_start
    small_done_after = get(url + "/info")[1]["batches"]
    assert client.is_alive(), "the large request finished before the small one: nothing was shown"
    client.join(timeout=120)
    big_took = time.monotonic() - start
    assert small[0] == 200 and big[0][0] == 200 and len(big[0][1]["translations"]) == 12
    assert small_done_after - before <= 2  # the small request waited for one batch, and went in the next
    assert health_took < 1 and small_took < big_took / 2, (health_took, small_took, big_took)
    assert small[1]["translations"] == Translator.from_run(long_run, "cpu", DecodeConfig(beam=3),
                                                           threads=1).translate(["A dog runs."])[0]


def test_a_large_request_is_spread_over_batches_that_later_ones_share(long_run):
    """The batcher itself, around the real translator: a request larger than the budget goes in
    several batches, each within the budget; one that arrives meanwhile joins the next batch; each
    gets exactly its own lines, as translated offline."""
    from seq2seq.serving.request_batching import DynamicBatcher

    translator = Translator.from_run(long_run, "cpu", DecodeConfig(beam=1), threads=1)
    big = [f"{n} dogs run in the park." for n in range(8)]
    small = ["A cat.", "Two birds sing."]
    tokens = {line: len(ids) + 1 for line, ids in zip(big + small, translator.tokenizers.src.encode(big + small))}
    budget = 3 * max(tokens.values())
    batches: list[list[str]] = []
    later_one_queued = threading.Event()

    def translate(key, lines, prefixes):
        batches.append(lines)
        later_one_queued.wait(timeout=30)  # the first batch ends only once the later request waits
        return translator.translate(lines, prefixes)

    async def scenario():
        batcher = DynamicBatcher(translate, budget, 0.0, 100)
        worker = asyncio.create_task(batcher.run())
        big_answer = asyncio.create_task(batcher.submit(1, big, None, [tokens[line] for line in big]))
        while not batcher.busy:
            await asyncio.sleep(0.001)
        small_answer = asyncio.create_task(batcher.submit(1, small, None, [tokens[line] for line in small]))
        await asyncio.sleep(0)  # submit queues the request before it first waits
        later_one_queued.set()
        answers = await asyncio.gather(big_answer, small_answer)
        worker.cancel()
        return answers, batcher.queued_lines

    (big_out, small_out), queued = asyncio.run(scenario())
    assert big_out == translator.translate(big) and small_out == translator.translate(small) and queued == 0
    assert [line for batch in batches for line in batch if line in big] == big  # in order, each once
    assert len(batches) >= 3 and all(sum(tokens[line] for line in batch) <= budget for batch in batches)
    where = {line: number for number, batch in enumerate(batches) for line in batch}
    assert where[small[0]] == 1  # the later request already has a line in the second batch,
    assert max(where[line] for line in small) < where[big[-1]]  # and is answered before the large one


# ---------------------------------------------------------------------------
# Time: nothing waits forever.

def test_a_request_past_its_deadline_gets_503_and_leaves_the_queue(long_run):
    with server(long_run, "--max-tokens", "2000", "--request-timeout-s", "1") as (url, process):
        start = time.monotonic()
        status, answer, headers = post(url, {"text": [LONG_LINE] * 20})
        assert status == 503 and "not translated within 1 s" in answer["detail"] and headers["Retry-After"]
        assert time.monotonic() - start < 5
        assert get(url + "/info")[1]["queued_lines"] == 0  # its lines left with it
        assert post(url, {"text": "A dog."})[0] == 200 and process.poll() is None


def test_stalled_connections_are_closed_within_the_read_timeout(shared):
    """300 connections that send nothing, part of their headers, or headers a byte at a time."""
    url, port, _ = shared
    silent = [connect(port) for _ in range(150)]
    partial = [connect(port) for _ in range(149)]
    for sock in partial:
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\n")
    trickle = connect(port)
    start = time.monotonic()

    def drip():  # a byte every 0.2 s: each would restart a keep-alive timer
        for byte in b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n":
            try:
                trickle.send(bytes([byte]))
            except OSError:
                return
            time.sleep(0.2)

    threading.Thread(target=drip, daemon=True).start()
    assert get(url + "/health")[0] == 200  # the server answers meanwhile
    received = closed_within(silent + partial + [trickle], READ_TIMEOUT + 5)
    assert not any(received) and time.monotonic() - start >= READ_TIMEOUT - 0.2
    for sock in silent + partial + [trickle]:
        sock.close()


def test_a_stalled_body_gets_408(shared):
    with connect(shared[1]) as sock:
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"text\": \"")
        answer, = closed_within([sock], READ_TIMEOUT + 5)
    assert answer.startswith(b"HTTP/1.1 408") and b"the body did not arrive within 1.5 s" in answer


def test_an_idle_connection_is_closed_after_keep_alive(shared):
    with connect(shared[1]) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        answer, = closed_within([sock], READ_TIMEOUT + 5)
    assert answer.startswith(b"HTTP/1.1 200") and time.monotonic() - start < READ_TIMEOUT


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_exits_within_the_shutdown_deadline_whatever_is_in_flight(long_run, signum, code):
    """A batch of 64 long lines (seconds in torch), a client stalled in its body and an idle one:
    the server still exits soon after its 1 s deadline, and the request in flight gets 503."""
    options = ("--max-tokens", "100000", "--max-request-tokens", "100000", "--shutdown-timeout-s", "1",
               "--read-timeout-s", "60")
    with server(long_run, *options) as (url, process):
        port = int(url.rsplit(":", 1)[1])
        big: list = []
        client = threading.Thread(target=lambda: big.append(post(url, {"text": [LONG_LINE] * 64})))
        client.start()
        stalled, idle = connect(port), connect(port)
        stalled.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"text\": \"")
        deadline = time.monotonic() + 60
        while not get(url + "/info")[1]["translating"] and time.monotonic() < deadline:
            time.sleep(0.02)
        start = time.monotonic()
        process.send_signal(signum)
        try:
            assert process.wait(timeout=1 + 5) == code
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("the server did not exit within its shutdown deadline") from None
        stopped_after = time.monotonic() - start
        client.join(timeout=30)
        stalled_got, idle_got = closed_within([stalled, idle], 5)
        stderr = process.stderr.read()
    assert stopped_after < 1 + 5
    assert big[0][0] == 503 and "shutting down" in big[0][1]["detail"], big
    assert (stalled_got.startswith(b"HTTP/1.1 503") or stalled_got == b"") and idle_got == b""
    assert "still being translated" in stderr and "Traceback" not in stderr, stderr


# ---------------------------------------------------------------------------
# The new limits are options like the others, checked before anything loads.

@pytest.mark.parametrize("option", ["--max-request-tokens", "--request-timeout-s", "--read-timeout-s",
                                    "--keep-alive-s", "--shutdown-timeout-s"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_the_limits_must_be_positive(tmp_path, option, value):
    from cli.main import app

    result = CliRunner().invoke(app, ["serve", "-m", str(tmp_path), option, value])
    assert option in one_error_line(result)
