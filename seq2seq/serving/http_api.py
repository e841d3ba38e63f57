"""The HTTP API of `s2s serve`: FastAPI over one loaded Translator and a `DynamicBatcher`.

- `POST /translate` takes `{"text": "one line"}` or `{"text": ["line", ...]}`,
  with optional `beam`, `nbest`, `prefix` (a string for a single text, a
  list as long as a list) and `tgt` (the language to translate into, for a
  model that writes several; the server's own by default), and answers
  `{"translations": ...}` in the same shape: one output per input line, as
  `s2s translate` writes it (with `nbest`, each output is a list of
  `{"text", "score", "logprob"}`). Requests with other settings (another
  beam, nbest or tgt) never share a batch.
- `GET /health` answers 200 once the model is loaded and the batcher runs.
- `GET /info` gives the model (languages, size), the decode defaults and the
  limits. FastAPI's own OpenAPI page is at /docs.

Whatever a request holds, it gets an answer and never disturbs the others:
a body over `max_bytes`, more than `max_lines` lines, more than
`max_request_tokens` source tokens, or a line longer than one batch is 413;
malformed JSON (NaN, Infinity and nesting too deep to parse included), a
wrong type or a setting the search cannot run is 422 with a message; a full
queue is 503 with Retry-After. Everything is checked before the request is
queued, so a batch only ever holds lines it can translate, and the checks
that tokenize run in a thread, so that a large body never stalls the event
loop (and with it /health and every other request).

Nothing waits forever. A request's headers, then its body, must arrive
within `read_timeout_s` (else the connection is closed; a late body gets 408
first); a queued request not translated within `request_timeout_s` gets 503
and leaves the queue; on SIGTERM, the requests still running after
`shutdown_timeout_s` get 503 (`uvicorn_config` passes these to uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..config import ServeConfig, to_dict
from ..errors import S2SError
from ..search.hypotheses import check_nbest
from ..search.translator import Translator
from .request_batching import DynamicBatcher, QueueFull

_SURROGATE = re.compile("[\ud800-\udfff]")
# The request fields that set a DecodeConfig field of another name, for the messages that name it.
REQUEST_FIELDS = {"tgt_lang": "tgt"}


class TranslateRequest(BaseModel):
    """The body of POST /translate."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | list[str] = Field(description="One line, or a list of lines: one translation each.")
    beam: int | None = Field(default=None, ge=1, description="Beam size; the server's default if left out.")
    nbest: int | None = Field(default=None, ge=1, description="Answer the N best translations of each line "
                                                              "(N <= beam) with their scores.")
    prefix: str | list[str] | None = Field(default=None, description="What each translation must start with: "
                                                                     "a string for one text, a list for a list.")
    tgt: str | None = Field(default=None, description="The language to translate into, for a model that writes "
                                                      "several (GET /info: model.tgt_lang); the server's default "
                                                      "if left out.")


class Hypothesis(BaseModel):
    text: str
    score: float
    logprob: float


class TranslateResponse(BaseModel):
    translations: str | list[str] | list[Hypothesis] | list[list[Hypothesis]]


class BadRequest(Exception):
    """A request the server answers with `status` and `message`, before it is queued."""

    def __init__(self, status: int, message: Any):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Prepared:
    """A request checked and ready to queue."""

    key: tuple[int, int | None, str]  # its search settings: beam, nbest and the target language
    lines: list[str]
    prefixes: list[str] | None
    tokens: list[int]  # source tokens of each line
    one_text: bool  # text was a string, not a list: the answer is one output, not a list


def valid_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (json.loads joins the pairs, so any left is alone)."""
    return _SURROGATE.sub("\ufffd", text)


def _no_constant(literal: str) -> Any:
    raise ValueError(f"{literal} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal} is too large for a number")
    return value


def parse_json(body: bytes) -> Any:
    """The JSON value of a request body, or BadRequest 422.

    Python's json takes NaN and Infinity (and turns 1e999 into infinity), which
    JSON has not, and which no answer quoting them could be written in; its
    parser recurses, so nesting thousands deep raises RecursionError.
    """
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BadRequest(422, "the body nests arrays or objects too deeply") from None
    except ValueError as err:
        raise BadRequest(422, f"the body is not JSON: {err}") from None


def refusal(status: int, message: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11), which also closes a connection that is slow to send a request.

    uvicorn closes a connection left idle after a response (timeout_keep_alive),
    but not one that has sent nothing yet, nor one that sends its headers a
    byte at a time, since every byte restarts that timer: such connections
    would stay open forever. Here a request's line and headers must all arrive
    within `header_timeout` seconds of the connection opening or of the last
    response. The body has its own deadline, in the app, which answers 408.
    """

    header_timeout: float  # seconds; `uvicorn_config` makes a subclass with the server's

    def connection_made(self, transport) -> None:
        self._headers_due: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
        super().connection_lost(exc)

    def _waiting_for_client(self) -> bool:
        """No request in hand: its headers have not all come, or its answer is sent already."""
        return not self.transport.is_closing() and (self.conn.their_state is h11.IDLE
                                                     or self.conn.our_state is h11.DONE)

    def _watch(self) -> None:
        """Start the deadline when the connection begins to wait for a request; stop it when one is in."""
        if self._waiting_for_client():
            if self._headers_due is None:  # never restarted by more bytes: a trickle must not extend it
                self._headers_due = self.loop.call_later(self.header_timeout, self._too_slow)
        elif self._headers_due is not None:
            self._headers_due.cancel()
            self._headers_due = None

    def _too_slow(self) -> None:
        self._headers_due = None
        if self._waiting_for_client():
            self.transport.close()


def uvicorn_config(app: FastAPI, limits: ServeConfig, log_level: str) -> uvicorn.Config:
    """How uvicorn serves `app`, with the deadlines of `limits` for reading requests, keeping idle
    connections and shutting down gracefully."""
    protocol = type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": limits.read_timeout_s})
    return uvicorn.Config(app, log_level=log_level, http=protocol, timeout_keep_alive=limits.keep_alive_s,
                          timeout_graceful_shutdown=limits.shutdown_timeout_s)


def build_app(translator: Translator, limits: ServeConfig) -> FastAPI:
    """The FastAPI app serving `translator`. Its batcher, `app.state.batcher`, runs its worker for
    the app's lifespan."""
    batch_tokens = translator.cfg.max_tokens
    searchers: dict[tuple[int, str], Translator] = {(translator.cfg.beam, translator.cfg.tgt_lang): translator}

    def searcher(beam: int, tgt: str) -> Translator:
        """The translator that searches with `beam` into `tgt`, opened once: opening checks them against
        the model (a ConfigError for a beam wider than the target vocabulary, or a language it does not
        write)."""
        if (beam, tgt) not in searchers:
            searchers[beam, tgt] = translator.with_config(replace(translator.cfg, beam=beam, tgt_lang=tgt))
        return searchers[beam, tgt]

    def translate_batch(key: tuple[int, int | None, str], lines: list[str], prefixes: list[str] | None) -> list[Any]:
        """Runs in the batcher's worker thread, one batch at a time."""
        beam, nbest, tgt = key
        searcher = searchers[beam, tgt]  # opened when the request was read
        if nbest:
            return [[{"text": h.text, "score": h.score, "logprob": h.logprob} for h in hypotheses]
                    for hypotheses in searcher.translate_nbest(lines, nbest, prefixes)]
        return searcher.translate(lines, prefixes)

    batcher = DynamicBatcher(translate_batch, batch_tokens, limits.max_wait_ms / 1000, limits.max_queue_lines)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker = asyncio.create_task(batcher.run())
        app.state.worker = worker
        yield
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    app = FastAPI(title="s2s", summary="Translate with an s2s model; lines from concurrent requests are "
                  "batched together.", lifespan=lifespan)
    app.state.batcher = batcher

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
            raise BadRequest(413, f"the body is {declared} bytes; at most {limits.max_bytes} are accepted")
        body = bytearray()
        try:
            async with asyncio.timeout(limits.read_timeout_s):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limits.max_bytes:
                        raise BadRequest(413, f"the body is over {limits.max_bytes} bytes, the most accepted")
        except TimeoutError:
            raise BadRequest(408, f"the body did not arrive within {limits.read_timeout_s:g} s") from None
        except ClientDisconnect:
            raise BadRequest(400, "the client went away before sending the whole body") from None
        return bytes(body)

    def prepare(body: bytes) -> Prepared:
        """The request in `body`, checked; BadRequest if it cannot be translated. It runs in a thread:
        parsing and tokenizing a large body takes a while."""
        try:
            asked = TranslateRequest.model_validate(parse_json(body))
        except ValidationError as err:
            # Without the input: a value nested thousands deep, quoted back, could not be written as JSON.
            raise BadRequest(422, err.errors(include_url=False, include_context=False, include_input=False)) \
                from None
        # JSON may hold lone surrogates ("\ud800"), which no tokenizer takes: they become U+FFFD,
        # as bytes that are not UTF-8 do in `s2s translate`.
        lines = [valid_text(line) for line in ([asked.text] if isinstance(asked.text, str) else asked.text)]
        if len(lines) > limits.max_lines:
            raise BadRequest(413, f"{len(lines)} lines; at most {limits.max_lines} per request")
        prefixes = None
        if asked.prefix is not None:
            if isinstance(asked.prefix, str) != isinstance(asked.text, str):
                raise BadRequest(422, "prefix must have text's shape: a string for a string, a list for a list")
            prefixes = [valid_text(p) for p in ([asked.prefix] if isinstance(asked.prefix, str) else asked.prefix)]
            if len(prefixes) != len(lines):
                raise BadRequest(422, f"{len(prefixes)} prefixes for {len(lines)} lines: give one per line")
        key = check_search(asked, prefixes)
        return Prepared(key, lines, prefixes, count_tokens(lines), isinstance(asked.text, str))

    def check_search(asked: TranslateRequest, prefixes: list[str] | None) -> tuple[int, int | None, str]:
        beam = asked.beam or translator.cfg.beam
        tgt = translator.cfg.tgt_lang if asked.tgt is None else asked.tgt
        try:
            search = searcher(beam, tgt)
            if asked.nbest is not None:
                check_nbest(asked.nbest, search.cfg)
            if prefixes is not None:
                search.encode_prefixes(prefixes)  # a prefix too long would fail its whole batch
        except S2SError as err:
            raise BadRequest(422, err.named(lambda name: REQUEST_FIELDS.get(name, name))) from None
        return beam, asked.nbest, tgt

    def count_tokens(lines: list[str]) -> list[int]:
        """The source tokens of each line (with its EOS and any language tag), within the limits on what
        one request costs."""
        tokens = translator.source_lengths(lines)
        for number, count in enumerate(tokens, 1):
            # The worker translates a line in one go: a longer one would hold every other request up.
            if count > batch_tokens:
                raise BadRequest(413, f"line {number} has {count} source tokens, more than a batch holds "
                                      f"({batch_tokens}): send it as shorter lines")
        if sum(tokens) > limits.max_request_tokens:
            raise BadRequest(413, f"{sum(tokens)} source tokens; at most {limits.max_request_tokens} per request")
        return tokens

    @app.post("/translate", response_model=TranslateResponse, responses={
        408: {"description": "The body did not arrive within the server's read timeout (GET /info: read_timeout_s)"},
        413: {"description": "More lines or source tokens than one request may have, a line longer than a batch, "
                             "or a body too large (GET /info: the limits)"},
        422: {"description": "Malformed JSON, a wrong type, or a setting the search cannot run"},
        503: {"description": "The queue is full, the request was not translated within the server's request "
                             "timeout, or the server is shutting down: retry after Retry-After seconds"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": TranslateRequest.model_json_schema()}}}})
    async def translate(request: Request):
        """Translate one line or a list of lines: one output per line, in order."""
        try:
            return await answer(request)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when its graceful shutdown ends; their
            # clients get this rather than uvicorn's bare 500.
            asyncio.current_task().uncancel()
            return refusal(503, "the server is shutting down: the request was not translated")

    async def answer(request: Request):
        try:
            body = await read_body(request)
            prepared = await asyncio.to_thread(prepare, body)
        except BadRequest as bad:
            # The rest of a late body may still come: the connection cannot carry another request.
            return refusal(bad.status, bad.message, {"Connection": "close"} if bad.status == 408 else None)
        try:
            async with asyncio.timeout(limits.request_timeout_s):
                outputs = await batcher.submit(prepared.key, prepared.lines, prepared.prefixes, prepared.tokens)
        except TimeoutError:
            return refusal(503, f"not translated within {limits.request_timeout_s:g} s, the most a request may "
                                "wait: the server is busy", {"Retry-After": "1"})
        except QueueFull as full:
            return refusal(503, f"the server is busy: {full}", {"Retry-After": "1"})
        except S2SError as err:
            return refusal(422, str(err))
        return {"translations": outputs[0] if prepared.one_text else outputs}

    @app.get("/health")
    async def health():
        """200 while the model is loaded and requests are being translated."""
        worker = getattr(app.state, "worker", None)
        if worker is None or worker.done():
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        """The model, the decode defaults, the limits, how many batches were translated, how many
        lines wait, and whether a batch is being translated now."""
        return {"model": translator.engine.describe(), "decode": to_dict(translator.cfg),
                "limits": {name: value for name, value in asdict(limits).items() if name not in ("host", "port")},
                "batches": batcher.batches, "queued_lines": batcher.queued_lines, "translating": batcher.busy}

    return app
