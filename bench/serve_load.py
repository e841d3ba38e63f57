"""Load on `s2s serve`: throughput and latency at 1, 8 and 32 concurrent clients, batching on and off.

Starts the real server on a free port of 127.0.0.1 (never anything else),
once with dynamic batching (`--max-wait-ms`, default 5) and once without
(`--max-wait-ms 0`). Each client sends one sentence per request from
test_2016_flickr, waiting for each answer before the next (a bounded load:
`--sentences` in all per level). Reports lines/s and p50/p95/p99 latency,
and compares with the same engine translating the same sentences offline in
one process (`Translator.translate`, one call). Appends to bench/RESULTS.md.

    python bench/serve_load.py --model runs/demo/en-de-ct2 --threads 2 --beam 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date

from results import DATA, ROOT, S2S, append_entry, machine, read_lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, beam: int, threads: int, wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([S2S, "serve", "-m", model, "--host", "127.0.0.1", "--port", str(port), "--beam",
                                str(beam), "--threads", str(threads), "--device", "cpu", "--max-wait-ms",
                                str(wait_ms), "--log-level", "warning"], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            sys.exit(f"the server exited: {process.stderr.read()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                return process, url
        except OSError:
            time.sleep(0.1)
    sys.exit("the server did not start")


def translate_one(connection: http.client.HTTPConnection, line: str) -> float:
    """Seconds from sending one sentence to its answer, on a kept-alive connection."""
    start = time.perf_counter()
    connection.request("POST", "/translate", body=json.dumps({"text": line}).encode(),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"the server answered {response.status}: {body[:300]!r}")
    json.loads(body)
    return time.perf_counter() - start


def load(url: str, sentences: list[str], clients: int) -> dict:
    """`clients` clients, each sending its share of `sentences` one request at a time over one
    kept-alive connection, as an HTTP client library does."""
    shares = [sentences[i::clients] for i in range(clients)]
    host, port = url.removeprefix("http://").split(":")

    def client(share: list[str]) -> list[float]:
        connection = http.client.HTTPConnection(host, int(port), timeout=300)
        connection.connect()
        # Without it, Nagle's algorithm and the server's delayed ACK add ~40 ms to every request.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return [translate_one(connection, line) for line in share]
        finally:
            connection.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(t for share in pool.map(client, shares) for t in share)
    seconds = time.perf_counter() - start
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"lines_per_s": len(latencies) / seconds, "p50": quantiles[49], "p95": quantiles[94], "p99": quantiles[98]}


def offline_speed(model: str, sentences: list[str], beam: int, threads: int) -> float:
    """Lines/s of the same engine translating the sentences in one call, after a warm-up."""
    from seq2seq.config import DecodeConfig
    from seq2seq.search.translator import Translator

    translator = Translator.from_run(model, "cpu", DecodeConfig(beam=beam), threads=threads)
    translator.translate(sentences)
    start = time.perf_counter()
    translator.translate(sentences)
    return len(sentences) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="run directory or exported folder")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--sentences", type=int, default=320, help="sentences sent per concurrency level")
    parser.add_argument("--wait-ms", type=float, default=5.0, help="--max-wait-ms with batching on")
    a = parser.parse_args()
    sentences = read_lines(DATA / "test_2016_flickr.en.gz")[:a.sentences]
    offline = offline_speed(a.model, sentences, a.beam, a.threads)
    rows = []
    for wait_ms in (a.wait_ms, 0.0):
        process, url = start_server(a.model, a.beam, a.threads, wait_ms)
        try:
            load(url, sentences[:16], 4)  # warm-up
            for clients in (int(c) for c in a.clients.split(",")):
                rows.append((wait_ms, clients, load(url, sentences, clients)))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    command = f"python bench/serve_load.py {' '.join(sys.argv[1:])}"
    lines = [f"\n## {date.today().isoformat()}: `s2s serve` under load, beam {a.beam}, {a.threads} threads\n",
             f"- Machine: {machine()}; server, clients and the offline run share it",
             f"- Command: `{command}`",
             f"- Protocol: the server on 127.0.0.1; each client sends one sentence of test_2016_flickr per request "
             f"and waits for the answer, over one kept-alive connection; {len(sentences)} sentences per level; latency from send to answer. "
             f"Offline: the same engine, `Translator.translate` of the same {len(sentences)} sentences in one "
             f"call: {offline:,.1f} lines/s",
             "", "| batching | clients | lines/s | vs offline | p50 ms | p95 ms | p99 ms |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for wait_ms, clients, r in rows:
        batching = f"on ({wait_ms:g} ms)" if wait_ms else "off (0 ms)"
        lines.append(f"| {batching} | {clients} | {r['lines_per_s']:,.1f} | {r['lines_per_s'] / offline:.0%} | "
                     f"{r['p50'] * 1000:,.0f} | {r['p95'] * 1000:,.0f} | {r['p99'] * 1000:,.0f} |")
    append_entry(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
