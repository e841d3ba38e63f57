"""The HTTP API of `s2s serve`: FastAPI over one loaded Translator and a `DynamicBatcher`.

- `POST /translate` takes `{"text": "one line"}` or `{"text": ["line", ...]}`,
  with optional `beam`, `nbest` and `prefix` (a string for a single text, a
  list as long as a list), and answers `{"translations": ...}` in the same
  shape: one output per input line, as `s2s translate` writes it (with
  `nbest`, each output is a list of `{"text", "score", "logprob"}`).
- `GET /health` answers 200 once the model is loaded and the batcher runs.
- `GET /info` gives the model (languages, size), the decode defaults and the
  limits. FastAPI's own OpenAPI page is at /docs.

Whatever a request holds, it gets an answer and never disturbs the others:
a body over `max_bytes` or more than `max_lines` lines is 413; malformed
JSON, a wrong type or a setting the search cannot run is 422 with a message;
a full queue is 503 with Retry-After. Everything is checked before the
request is queued, so a batch only ever holds lines it can translate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import asdict, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .batcher import DynamicBatcher, QueueFull
from .config import ServeConfig, to_dict
from .errors import S2SError
from .search import check_decode_config, check_nbest
from .translator import Translator

_SURROGATE = re.compile("[\ud800-\udfff]")


class TranslateRequest(BaseModel):
    """The body of POST /translate."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | list[str] = Field(description="One line, or a list of lines: one translation each.")
    beam: int | None = Field(default=None, ge=1, description="Beam size; the server's default if left out.")
    nbest: int | None = Field(default=None, ge=1, description="Answer the N best translations of each line "
                                                              "(N <= beam) with their scores.")
    prefix: str | list[str] | None = Field(default=None, description="What each translation must start with: "
                                                                     "a string for one text, a list for a list.")


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


def valid_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (json.loads joins the pairs, so any left is alone)."""
    return _SURROGATE.sub("\ufffd", text)


def build_app(translator: Translator, limits: ServeConfig) -> FastAPI:
    """The FastAPI app serving `translator`; its batcher's worker runs for the app's lifespan."""
    limits.validate()
    vocab_size = translator.tokenizers.tgt.vocab_size
    by_beam: dict[int, Translator] = {translator.cfg.beam: translator}

    def translate_batch(key: tuple[int, int | None], lines: list[str], prefixes: list[str] | None) -> list[Any]:
        """Runs in the batcher's worker thread, one batch at a time."""
        beam, nbest = key
        if beam not in by_beam:
            by_beam[beam] = translator.with_config(replace(translator.cfg, beam=beam))
        searcher = by_beam[beam]
        if nbest:
            return [[{"text": h.text, "score": h.score, "logprob": h.logprob} for h in hypotheses]
                    for hypotheses in searcher.translate_nbest(lines, nbest, prefixes)]
        return searcher.translate(lines, prefixes)

    batcher = DynamicBatcher(translate_batch, translator.cfg.max_tokens, limits.max_wait_ms / 1000,
                             limits.max_queue_lines)

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

    async def read_request(request: Request) -> tuple[TranslateRequest, list[str], list[str] | None]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
            raise BadRequest(413, f"the body is {declared} bytes; at most {limits.max_bytes} are accepted")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_bytes:
                raise BadRequest(413, f"the body is over {limits.max_bytes} bytes, the most accepted")
        try:
            data = json.loads(body)
        except ValueError as err:
            raise BadRequest(422, f"the body is not JSON: {err}") from None
        try:
            asked = TranslateRequest.model_validate(data)
        except ValidationError as err:
            raise BadRequest(422, err.errors(include_url=False, include_context=False)) from None
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
        return asked, lines, prefixes

    def check_search(asked: TranslateRequest, prefixes: list[str] | None) -> tuple[int, int | None]:
        cfg = replace(translator.cfg, beam=asked.beam or translator.cfg.beam)
        try:
            check_decode_config(cfg, vocab_size)
            if asked.nbest is not None:
                check_nbest(asked.nbest, cfg)
            if prefixes is not None:
                translator.encode_prefixes(prefixes)  # a prefix too long would fail its whole batch
        except S2SError as err:
            raise BadRequest(422, str(err)) from None
        return cfg.beam, asked.nbest

    @app.post("/translate", response_model=TranslateResponse, responses={
        413: {"description": "More than --max-lines lines, or a body over --max-bytes"},
        422: {"description": "Malformed JSON, a wrong type, or a setting the search cannot run"},
        503: {"description": "The queue is full: retry after Retry-After seconds"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": TranslateRequest.model_json_schema()}}}})
    async def translate(request: Request):
        """Translate one line or a list of lines: one output per line, in order."""
        try:
            asked, lines, prefixes = await read_request(request)
            key = check_search(asked, prefixes)
        except BadRequest as bad:
            return JSONResponse({"detail": bad.message}, status_code=bad.status)
        tokens = sum(len(ids) + 1 for ids in translator.tokenizers.src.encode(lines))
        try:
            outputs = await batcher.submit(key, lines, prefixes, tokens)
        except QueueFull as full:
            return JSONResponse({"detail": f"the server is busy: {full}"}, status_code=503,
                                headers={"Retry-After": "1"})
        except S2SError as err:
            return JSONResponse({"detail": str(err)}, status_code=422)
        return {"translations": outputs[0] if isinstance(asked.text, str) else outputs}

    @app.get("/health")
    async def health():
        """200 while the model is loaded and requests are being translated."""
        worker = getattr(app.state, "worker", None)
        if worker is None or worker.done():
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return {"status": "ok"}

    @app.get("/info")
    async def info():
        """The model, the decode defaults, the limits, and how many batches were translated."""
        return {"model": translator.engine.describe(), "decode": to_dict(translator.cfg),
                "limits": {name: value for name, value in asdict(limits).items() if name.startswith("max_")},
                "batches": batcher.batches, "queued_lines": batcher.queued_lines}

    return app
