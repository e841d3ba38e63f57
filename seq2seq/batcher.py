"""Dynamic batching: lines from concurrent requests translated together, each request answered
with exactly its own lines, in order.

Requests queue with their search settings (`key`: requests with other
settings are never batched together) and their size in source tokens. One
worker takes the oldest request and every later one with the same settings,
in arrival order, until the batch reaches its token budget or the oldest has
waited `max_wait` seconds, whichever comes first; then it translates the batch
in a thread, so the event loop goes on accepting requests, and hands each
request its slice of the result.

The queue is bounded in lines: a request that would go over gets `QueueFull`
at once, never an unbounded wait. A request whose client went away before its
batch started is left out of it; one whose batch is running gets its result
dropped. Either way the others are not held up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds as many lines as it may: come back later."""


@dataclass
class Request:
    """One queued request: its lines, their prefixes, and where its answer goes."""

    key: Hashable  # the search settings: only requests with equal keys share a batch
    lines: list[str]
    prefixes: list[str] | None
    tokens: int  # source tokens, for the batch's budget
    arrived: float  # the event loop's clock
    answer: asyncio.Future = field(repr=False)


# Translates the lines of one batch (with their prefixes, or None), all with the search settings
# `key`; returns one result per line, in order. It runs in a worker thread.
TranslateBatch = Callable[[Hashable, list[str], "list[str] | None"], list[Any]]


class DynamicBatcher:
    """Queues requests and translates them in token-budgeted batches with one worker (`run`)."""

    def __init__(self, translate: TranslateBatch, max_tokens: int, max_wait: float, max_queue_lines: int):
        self.translate = translate
        self.max_tokens, self.max_wait, self.max_queue_lines = max_tokens, max_wait, max_queue_lines
        self.pending: deque[Request] = deque()
        self.queued_lines = 0
        self.batches = 0  # batches translated, for /info and the tests
        self._arrival = asyncio.Event()

    async def submit(self, key: Hashable, lines: list[str], prefixes: list[str] | None, tokens: int) -> list[Any]:
        """The results for `lines`, once their batch is translated; QueueFull if the queue has no room."""
        if self.queued_lines + len(lines) > self.max_queue_lines:
            raise QueueFull(f"{self.queued_lines} lines are queued; at most {self.max_queue_lines} may be")
        loop = asyncio.get_running_loop()
        request = Request(key, lines, prefixes, tokens, loop.time(), loop.create_future())
        self.pending.append(request)
        self.queued_lines += len(lines)
        self._arrival.set()
        return await request.answer  # a cancelled wait cancels the future: `_take` then skips it

    async def run(self) -> None:
        """The worker: forever, wait for requests, batch them, translate, answer."""
        while True:
            batch = await self._next_batch()
            lines = [line for request in batch for line in request.lines]
            prefixes = None
            if any(request.prefixes is not None for request in batch):
                prefixes = [prefix for request in batch
                            for prefix in (request.prefixes or [""] * len(request.lines))]
            try:
                results = await asyncio.to_thread(self.translate, batch[0].key, lines, prefixes)
            except Exception as err:  # noqa: BLE001 - the batch's requests get the error, the worker goes on
                for request in batch:
                    if not request.answer.done():
                        request.answer.set_exception(err)
                continue
            finally:
                self.batches += 1
            start = 0
            for request in batch:
                if not request.answer.done():  # its client may have gone away meanwhile
                    request.answer.set_result(results[start:start + len(request.lines)])
                start += len(request.lines)

    async def _next_batch(self) -> list[Request]:
        """The next batch: the oldest request and later ones with its settings, once the budget is
        reached or the oldest has waited max_wait."""
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self.pending:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            first = self.pending[0]
            deadline = first.arrived + self.max_wait
            while self._tokens_for(first.key) < self.max_tokens and loop.time() < deadline:
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), deadline - loop.time())
                except TimeoutError:
                    break
            batch = self._take(first.key)
            if batch:
                return batch

    def _tokens_for(self, key: Hashable) -> int:
        return sum(request.tokens for request in self.pending if request.key == key and not request.answer.done())

    def _take(self, key: Hashable) -> list[Request]:
        """Remove from the queue and return the requests with `key`, oldest first, up to the token
        budget (at least one); cancelled ones are dropped on the way."""
        batch: list[Request] = []
        tokens = 0
        full = False  # once one does not fit, later ones wait too: first come, first served
        kept: deque[Request] = deque()
        while self.pending:
            request = self.pending.popleft()
            if request.answer.done():  # cancelled while it waited
                self.queued_lines -= len(request.lines)
                continue
            if request.key == key and not full and (not batch or tokens + request.tokens <= self.max_tokens):
                batch.append(request)
                tokens += request.tokens
                self.queued_lines -= len(request.lines)
            else:
                full = full or request.key == key
                kept.append(request)
        self.pending = kept
        return batch

    def _drop_cancelled(self) -> None:
        for request in [r for r in self.pending if r.answer.done()]:
            self.pending.remove(request)
            self.queued_lines -= len(request.lines)
