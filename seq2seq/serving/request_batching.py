"""Dynamic batching: lines from concurrent requests translated together, each request answered
with exactly its own lines, in order.

Requests queue with their search settings (`key`: requests with other
settings are never batched together) and the size of each line in source
tokens. One worker takes the request that has waited longest and fills a
batch from it and every other waiting request with the same settings, a line
from each in turn, until the batch reaches its token budget or the longest
waiting request has waited `max_wait` seconds, whichever comes first. A
request larger than one batch is thus spread over several, and a small
request that comes in meanwhile shares the next one instead of waiting for
the large one to finish. A partly taken request waits again from the moment
its batch was taken, behind those that have waited longer.

The worker translates each batch in a daemon thread, so that the event loop
goes on accepting requests, and so that a batch still running in torch when
the server stops never keeps the process alive (`busy` says whether one
is). It hands each request its results once all its lines are translated.

The queue is bounded in lines: a request that would go over gets `QueueFull`
at once, never an unbounded wait. A request whose client went away or whose
deadline passed (its `submit` was cancelled) leaves the queue at once; the
results of its lines already in a batch are dropped. Either way the others
are not held up.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds as many lines as it may: come back later."""


@dataclass(eq=False)
class Request:
    """One queued request: its lines, their prefixes, and where its answer goes."""

    key: Hashable  # the search settings: only requests with equal keys share a batch
    lines: list[str]
    prefixes: list[str] | None
    tokens: list[int]  # source tokens of each line, for the batches' budget
    waiting_since: float  # the event loop's clock: when it arrived, then when a batch last took lines of it
    answer: asyncio.Future = field(repr=False)
    taken: int = 0  # lines[:taken] are in batches already
    results: list[Any] = field(default_factory=list, repr=False)  # one per line, in order, as batches finish

    @property
    def untaken(self) -> int:
        return len(self.lines) - self.taken


@dataclass
class Part:
    """Lines start:stop of one request, in one batch."""

    request: Request
    start: int
    stop: int


# Translates the lines of one batch (with their prefixes, or None), all with the search settings
# `key`; returns one result per line, in order. It runs in a worker thread.
TranslateBatch = Callable[[Hashable, list[str], "list[str] | None"], list[Any]]


class DynamicBatcher:
    """Queues requests and translates them in token-budgeted batches with one worker (`run`)."""

    def __init__(self, translate: TranslateBatch, max_tokens: int, max_wait: float, max_queue_lines: int):
        self.translate = translate
        self.max_tokens, self.max_wait, self.max_queue_lines = max_tokens, max_wait, max_queue_lines
        self.pending: deque[Request] = deque()  # requests with lines to take, longest waiting first
        self.queued_lines = 0  # lines waiting for a batch
        self.batches = 0  # batches translated, for /info and the tests
        self._arrival = asyncio.Event()
        self._thread: threading.Thread | None = None  # the thread of the batch being translated

    @property
    def busy(self) -> bool:
        """Whether a batch is being translated in the worker thread (even one nobody waits for)."""
        return self._thread is not None and self._thread.is_alive()

    async def submit(self, key: Hashable, lines: list[str], prefixes: list[str] | None,
                     tokens: list[int]) -> list[Any]:
        """The results for `lines` (of `tokens` source tokens each), once all are translated;
        QueueFull if the queue has no room. Cancelling the wait takes the request out of the queue."""
        if not lines:
            return []
        if self.queued_lines + len(lines) > self.max_queue_lines:
            raise QueueFull(f"{self.queued_lines} lines are queued; at most {self.max_queue_lines} may be")
        loop = asyncio.get_running_loop()
        request = Request(key, lines, prefixes, tokens, loop.time(), loop.create_future())
        self.pending.append(request)
        self.queued_lines += len(lines)
        self._arrival.set()
        try:
            return await request.answer
        finally:
            self._withdraw(request)  # gone early (cancelled): its lines must not hold places in the queue

    async def run(self) -> None:
        """The worker: forever, wait for requests, batch them, translate, answer."""
        while True:
            parts = await self._next_batch()
            lines = [line for part in parts for line in part.request.lines[part.start:part.stop]]
            prefixes = None
            if any(part.request.prefixes is not None for part in parts):
                prefixes = [prefix for part in parts for prefix in
                            (part.request.prefixes or [""] * len(part.request.lines))[part.start:part.stop]]
            try:
                results = await self._in_thread(parts[0].request.key, lines, prefixes)
            except Exception as err:  # noqa: BLE001 - the batch's requests get the error, the worker goes on
                for part in parts:
                    self._withdraw(part.request)
                    if not part.request.answer.done():
                        part.request.answer.set_exception(err)
                continue
            finally:
                self.batches += 1
            done = 0
            for part in parts:
                request = part.request
                request.results += results[done:done + part.stop - part.start]  # its parts come in order
                done += part.stop - part.start
                if part.stop == len(request.lines) and not request.answer.done():  # its client may be gone
                    request.answer.set_result(request.results)

    async def _in_thread(self, key: Hashable, lines: list[str], prefixes: list[str] | None) -> list[Any]:
        """`translate(key, lines, prefixes)` in a new daemon thread, awaited without blocking the loop.

        Not asyncio.to_thread: its executor's threads are joined at exit, so a batch still in
        torch would keep a stopped server alive until the batch ends."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future = loop.create_future()

        def deliver(setter: Callable[[Any], None], value: Any) -> None:
            if not result.done():  # the worker may have been cancelled meanwhile
                setter(value)

        def work() -> None:
            try:
                outcome = (result.set_result, self.translate(key, lines, prefixes))
            except BaseException as err:  # noqa: BLE001 - handed to the worker, which answers with it
                outcome = (result.set_exception, err)
            try:
                loop.call_soon_threadsafe(deliver, *outcome)
            except RuntimeError:  # the loop is closed: the server stopped, nobody waits for this batch
                pass

        self._thread = threading.Thread(target=work, name="s2s-batch", daemon=True)
        self._thread.start()
        return await result

    async def _next_batch(self) -> list[Part]:
        """The next batch: lines of the longest waiting request and of later ones with its settings,
        once the budget is reached or that request has waited max_wait."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            first = self.pending[0]
            deadline = first.waiting_since + self.max_wait
            while self._tokens_for(first.key) < self.max_tokens and loop.time() < deadline:
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), deadline - loop.time())
                except TimeoutError:
                    break
            parts = self._take(first.key, loop.time())
            if parts:
                return parts

    def _tokens_for(self, key: Hashable) -> int:
        return sum(sum(request.tokens[request.taken:]) for request in self.pending if request.key == key)

    def _take(self, key: Hashable, now: float) -> list[Part]:
        """Take lines of the waiting requests with `key` for one batch: one line from each in turn,
        longest waiting first, up to the token budget (at least one line). A request with lines
        left waits again from `now`, behind the others."""
        waiting = [request for request in self.pending if request.key == key]
        starts = {request: request.taken for request in waiting}
        tokens = 0
        while waiting:
            for request in list(waiting):
                size = request.tokens[request.taken]
                if tokens and tokens + size > self.max_tokens:
                    waiting = []  # first come, first served: a line that does not fit stops the batch
                    break
                request.taken += 1
                tokens += size
                if not request.untaken:
                    waiting.remove(request)
        parts = [Part(request, start, request.taken) for request, start in starts.items() if request.taken > start]
        for part in parts:
            self.queued_lines -= part.stop - part.start
            self.pending.remove(part.request)
            if part.request.untaken:
                part.request.waiting_since = now
                self.pending.append(part.request)
        return parts

    def _withdraw(self, request: Request) -> None:
        """Take `request`'s lines not yet in a batch out of the queue."""
        if request in self.pending:
            self.pending.remove(request)
            self.queued_lines -= request.untaken
