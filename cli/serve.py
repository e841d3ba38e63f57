"""`s2s serve`: translate over HTTP, batching concurrent requests (seq2seq.serving.http_api).

The serving options are ServeConfig's fields and the search defaults
DecodeConfig's, generated like every command's. FastAPI, uvicorn and torch
are imported inside the command, so that `--help` needs none of them.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from seq2seq.config import SEARCH, SERVING, DecodeConfig, ServeConfig
from seq2seq.errors import ConfigError
from seq2seq.files.reads import Reads, refuse_stdout_clobbering

from .display import stderr, warning
from .model_options import (
    DECODE_OPTIONS,
    MODEL_HELP,
    Device,
    Engine,
    Threads,
    Weights,
    load_translator,
    model_label,
)
from .options import ConfigOptions, config_options

SERVE_OPTIONS = ConfigOptions(ServeConfig)
INSTALL_HINT = "pip install 's2s[serve]'"


def import_server():
    """seq2seq.serving.http_api, or a ConfigError saying how to install what it needs."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"s2s serve needs the optional packages fastapi and uvicorn ({err}): {INSTALL_HINT}") \
            from None
    from seq2seq.serving import http_api as server

    return server


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, so that a port in use is one clear error before the model loads."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP by name: asyncio sets TCP_NODELAY only on sockets that say so, and without
        # it Nagle's algorithm and delayed ACKs add ~40 ms to each request on a kept-alive connection.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


@config_options(panels=(SERVING, SEARCH), serve=SERVE_OPTIONS, decode=DECODE_OPTIONS)
def serve_command(
    serve: dict[str, Any],
    decode: dict[str, Any],
    model: Annotated[Path, typer.Option("--model", "-m", help=MODEL_HELP)],
    log_level: Annotated[str, typer.Option(help="uvicorn's log level: critical, error, warning, info, debug "
                                           "or trace.")] = "info",
    device: Device = "auto",
    weights: Weights = None,
    engine: Engine = None,
    threads: Threads = None,
) -> None:
    """Serve translations over HTTP: POST /translate, GET /health, GET /info, and the API at /docs."""
    settings = ServeConfig(**serve)
    cfg = DecodeConfig(**decode)
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ConfigError(f"--log-level must be critical, error, warning, info, debug or trace, got {log_level!r}")
    refuse_stdout_clobbering(Reads().folder(model_label(model), model))  # uvicorn's access log goes there
    server = import_server()
    import uvicorn

    sock = listening_socket(settings.host, settings.port)
    try:
        translator = load_translator(model, device, cfg, weights, engine, threads)
        app = server.build_app(translator, settings)
        config = server.uvicorn_config(app, settings, log_level)
        stderr.print(f"serving {model} ({translator.engine.name}) on http://{settings.host}:{settings.port}")
        run_until_stopped(uvicorn.Server(config), sock, app.state.batcher)
    finally:
        sock.close()


def run_until_stopped(uvicorn_server: Any, sock: socket.socket, batcher: Any) -> None:
    """Run the server until it has shut down; then, if `batcher` is still translating a batch
    (one that outlasted the shutdown deadline), leave the process at once. A drained server exits 0
    after SIGTERM and 130 after Ctrl-C (SIGINT)."""
    # uvicorn answers SIGTERM and Ctrl-C by draining: no new connections, the requests in flight
    # finish, for at most --shutdown-timeout-s. Afterwards it raises the signal again with the
    # handler it found, so these only note it. Python's default SIGINT handler would let
    # asyncio's own take over, which raises KeyboardInterrupt only if the server's task had not
    # ended yet: Ctrl-C would exit 0 or 130 by a race.
    interrupted: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    code = 0
    try:
        uvicorn_server.run(sockets=[sock])
        if interrupted:
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        code = 130
        raise
    except BaseException:
        code = 1
        raise
    finally:
        if batcher.busy:
            # Its requests were answered already, and a torch call cannot be interrupted. Exiting
            # normally would stop its thread in the middle of that call, which aborts the process.
            warning("stopped while a batch was still being translated; its requests got 503")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
