"""Subword regularization (Kudo 2018): every epoch trains on a segmentation of the training pairs
drawn afresh, and validation on the best one.

An epoch's segmentation is a function of the run's seed, the epoch and num_proc
(seq2seq.data.encode.sample_corpus), as its batch order is: a resumed run draws what
the run that never stopped drew, from the epoch its checkpoint holds. Its pairs are those the
best segmentation keeps, whatever their draw (a side drawn over max_len keeps its best
segmentation), so an epoch's pair numbers are every epoch's.

The next epoch is drawn while the current one trains, in a background thread (and in
num_proc processes of `datasets.map` for a large corpus), into a scratch folder beside the
corpus's `datasets` cache that holds the epoch under way and the next, and is removed when the
run ends.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from concurrent.futures import Future
from pathlib import Path

import datasets
import torch

from ..config import TrainConfig
from ..data.encode import Sampling, sample_corpus
from ..data.token_store import TokenStore, token_store
from ..data.tokenizer import TokenizerPair
from ..errors import DataError

_CANCEL_FILE = "cancelled"  # its presence stops a draw under way (sample_corpus)
_STOP_WAIT_S = 60.0  # how long closing waits for a draw to notice it: one batch of rows, normally


class EpochSegmentations:
    """The training pairs' token stores of each epoch, each in a segmentation of its own.

    `texts` holds the pairs to train on (columns src and tgt), in order: those the best
    segmentation keeps. Ask for epochs in increasing order; `stores(epoch)` waits for the
    draw `prefetch(epoch)` started, or draws it there and then.
    """

    def __init__(self, texts: datasets.Dataset, tokenizers: TokenizerPair, cfg: TrainConfig, device: torch.device):
        self.texts, self.tokenizers, self.cfg, self.device = texts, tokenizers, cfg, device
        # Beside the corpus's own cache, where there is room for its ids; a memory-only corpus has none.
        parent = Path(texts.cache_files[0]["filename"]).parent if texts.cache_files else None
        try:
            self.scratch = Path(tempfile.mkdtemp(prefix="s2s-subword-", dir=parent))
        except OSError as err:
            raise DataError(f"cannot create a folder for the sampled segmentations in {parent or tempfile.gettempdir()} "
                            f"({err.strerror})") from None
        self._draws: dict[int, Future[datasets.Dataset]] = {}
        self._threads: list[threading.Thread] = []
        # Closed when the run ends, and at the latest when the process exits.
        self.close = weakref.finalize(self, _remove, self.scratch, self._threads)
        self._current: tuple[int, tuple[TokenStore, TokenStore]] | None = None

    def prefetch(self, epoch: int) -> None:
        """Start drawing `epoch`'s segmentation in the background, unless it is drawn or under way."""
        if epoch in self._draws or not self.close.alive:
            return
        future: Future[datasets.Dataset] = Future()

        def draw() -> None:
            try:
                future.set_result(self._draw(epoch))
            except BaseException as err:  # handed to whoever asks for the epoch
                future.set_exception(err)

        self._draws[epoch] = future
        # A daemon thread: a process that fails mid-draw does not wait for it to exit.
        thread = threading.Thread(target=draw, name=f"s2s-subword-epoch-{epoch}", daemon=True)
        self._threads[:] = [*(t for t in self._threads if t.is_alive()), thread]
        thread.start()

    def stores(self, epoch: int) -> tuple[TokenStore, TokenStore]:
        """Source and target token stores of `epoch`'s segmentation; the files of earlier epochs go."""
        if self._current is not None and self._current[0] == epoch:
            return self._current[1]
        self.prefetch(epoch)
        encoded = self._draws[epoch].result()
        stores = tuple(token_store(encoded.data.column(name), self.device, self.cfg.token_store)
                       for name in ("src_ids", "tgt_ids"))
        self._current = epoch, stores  # type: ignore[assignment]
        for earlier in [e for e in self._draws if e < epoch]:
            del self._draws[earlier]
            shutil.rmtree(self._folder(earlier), ignore_errors=True)  # a store still reading it keeps its map
        return stores  # type: ignore[return-value]

    def _draw(self, epoch: int) -> datasets.Dataset:
        cfg = self.cfg
        sampling = Sampling(alpha=cfg.subword_alpha, nbest_size=cfg.subword_nbest, seed=cfg.seed, epoch=epoch,
                            max_len=cfg.max_len)
        folder = self._folder(epoch)
        try:
            folder.mkdir()
            return sample_corpus(self.texts, self.tokenizers, sampling, folder / "ids.arrow", num_proc=cfg.num_proc,
                                 cancel_file=self.scratch / _CANCEL_FILE)
        except OSError as err:
            raise DataError(f"cannot write the sampled segmentation of epoch {epoch} to {folder} "
                            f"({err.strerror or err})") from None

    def _folder(self, epoch: int) -> Path:
        return self.scratch / f"epoch-{epoch}"


def _remove(scratch: Path, threads: list[threading.Thread]) -> None:
    """Stop the draws under way, then remove the scratch folder (what `EpochSegmentations.close` does)."""
    try:
        (scratch / _CANCEL_FILE).touch()
    except OSError:
        pass
    for thread in threads:
        if thread is not threading.current_thread():  # the last reference may go in a draw's own thread
            thread.join(_STOP_WAIT_S)
    shutil.rmtree(scratch, ignore_errors=True)
