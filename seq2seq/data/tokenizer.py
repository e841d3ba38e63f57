"""Sentencepiece tokenizers: training on a bounded sample, loading, encode/decode.

A tokenizer folder holds either one model shared by both languages
(`tokenizer.model` + `tokenizer.vocab`) or one per side
(`tokenizer.src.model`, `tokenizer.tgt.model` + their `.vocab` files). Every
model reserves ids 0-3 for pad, unk, bos and eos, matching `ModelConfig`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sentencepiece as spm

from ..errors import TokenizerError
from ..files.atomic import atomic_write_bytes
from ..files.run_layout import SHARED_FILE, SRC_FILE, TGT_FILE

if TYPE_CHECKING:  # a tokenizer is trained from a `datasets` corpus; loading one never imports datasets
    import datasets

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_TYPES = ("unigram", "bpe")

_SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
_READ_BATCH = 10_000  # rows per batch when sampling a corpus
# sentencepiece keeps one sampling seed per process: setting it and drawing with it go together.
_SAMPLING_SEED = threading.Lock()


class Tokenizer:
    """One sentencepiece model, loaded from a `.model` file."""

    def __init__(self, path: str | Path):
        """Load `path`; TokenizerError if it is missing, unreadable, not a
        sentencepiece model, or reserves other special ids than s2s uses."""
        self.path = Path(path)
        if not self.path.exists():
            raise TokenizerError(f"{self.path}: no such tokenizer model")
        if self.path.is_dir():
            raise TokenizerError(f"{self.path} is a folder, expected a sentencepiece .model file")
        try:
            model_bytes = self.path.read_bytes()
        except OSError as err:
            raise TokenizerError(f"{self.path}: cannot read ({err.strerror})") from None
        self.sha256 = hashlib.sha256(model_bytes).hexdigest()
        self._processor = spm.SentencePieceProcessor()
        try:
            # Loading from bytes rather than the path: what we hashed is what we use.
            self._processor.LoadFromSerializedProto(model_bytes)
        except (RuntimeError, ValueError):
            raise TokenizerError(f"{self.path} is not a sentencepiece model") from None
        found = {"pad": self._processor.pad_id(), "unk": self._processor.unk_id(),
                 "bos": self._processor.bos_id(), "eos": self._processor.eos_id()}
        if found != _SPECIAL_IDS:
            have = " ".join(f"{name}={found[name]}" for name in found)
            want = " ".join(f"{name}={_SPECIAL_IDS[name]}" for name in _SPECIAL_IDS)
            raise TokenizerError(f"{self.path}: special token ids are {have} but s2s needs {want}; "
                                 "train it with `s2s tokenizer train`")
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID
        self._specials = frozenset((PAD_ID, BOS_ID, EOS_ID))

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._processor.vocab_size()

    def pieces(self) -> list[str]:
        """Every piece, in id order: the vocabulary another engine needs to use the same ids."""
        return [self._processor.id_to_piece(i) for i in range(self.vocab_size)]

    def id_pieces(self, ids: list[int]) -> list[str]:
        """The piece of each id, as the vocabulary writes it ("▁dog")."""
        return [self._processor.id_to_piece(i) for i in ids]

    def piece_id(self, piece: str) -> int:
        """The id of `piece` (a language tag: "<2de>"); TokenizerError if the vocabulary has no such piece."""
        found = self._processor.piece_to_id(piece)
        if found == UNK_ID and piece != self._processor.id_to_piece(UNK_ID):
            raise TokenizerError(f"{self.path}: has no piece {piece}")
        return found

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Token ids of each line: pieces only, no BOS or EOS added."""
        return self._processor.encode(lines, out_type=int)

    def sample(self, lines: list[str], alpha: float, nbest_size: int, seed: int) -> list[list[int]]:
        """Token ids of each line in a segmentation drawn at random, as subword regularization
        trains on (pieces only, like `encode`): Kudo's sampling for a unigram model, among the
        `nbest_size` best segmentations (-1: all) with smoothing `alpha`; BPE-dropout for a BPE
        model, with `alpha` the dropout probability (`nbest_size` is then ignored, but checked). The draw is a
        function of `seed` (0 to 2**32 - 2) and the lines alone."""
        if nbest_size != -1 and nbest_size < 2:
            # Sampling among the one best segmentation would be no sampling at all.
            raise TokenizerError(f"{self.path}: subword sampling needs an nbest size of -1 (all) or at least 2, "
                                 f"got {nbest_size}")
        with _SAMPLING_SEED:
            spm.set_random_generator_seed(seed)
            # sentencepiece draws from a generator of the thread's own, seeded from the process's
            # seed when the thread first samples; sentencepiece 0.2.0 never reseeds it afterwards.
            # A batch on one thread starts a new thread for this call, whose draw `seed` decides.
            return self._processor.encode(lines, out_type=int, enable_sampling=True, alpha=alpha,
                                          nbest_size=nbest_size, num_threads=1)

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Text of each id sequence; pad, bos and eos ids are dropped first."""
        if not ids:
            return []  # sentencepiece would answer an empty batch with one empty string
        kept = [[i for i in seq if i not in self._specials] for seq in ids]
        for seq in kept:
            for i in seq:
                if not 0 <= i < self.vocab_size:
                    raise TokenizerError(f"{self.path}: cannot decode id {i}; "
                                         f"the vocabulary has ids 0 to {self.vocab_size - 1}")
        return self._processor.decode(kept)

    def encode_with_offsets(self, lines: list[str]) -> list[tuple[list[int], list[int]]]:
        """For each line, its ids (as `encode` gives them) and where each piece begins in the line:
        a byte offset into its UTF-8. Normalisation may change a piece's text (NFKC: "ﬁ" is "fi"),
        but its offsets always point into the line as given."""
        return [([piece.id for piece in text.pieces], [piece.begin for piece in text.pieces])
                for text in self._processor.encode(lines, out_type="proto")]

    def decode_with_offsets(self, ids: list[int]) -> tuple[str, list[int]]:
        """The text of one id sequence without special ids (as `decode` gives it), and where each
        piece begins in it: a byte offset into its UTF-8."""
        if not ids:
            return "", []
        text = self._processor.decode([ids], out_type="proto")[0]
        return text.text, [piece.begin for piece in text.pieces]

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


@dataclass
class TokenizerPair:
    """The source and target tokenizers; the same object when one model serves both."""

    src: Tokenizer
    tgt: Tokenizer

    @property
    def shared(self) -> bool:
        """True when one model file serves both languages."""
        return self.src.path.resolve() == self.tgt.path.resolve()

    def files(self) -> list[Path]:
        """The model files: one when shared, source then target otherwise."""
        return [self.src.path] if self.shared else [self.src.path, self.tgt.path]

    def model_fields(self) -> dict[str, int]:
        """The ModelConfig fields that come from the tokenizers: vocabulary sizes and special ids."""
        return {"src_vocab_size": self.src.vocab_size, "tgt_vocab_size": self.tgt.vocab_size,
                "pad_id": self.tgt.pad_id, "unk_id": self.tgt.unk_id, "bos_id": self.tgt.bos_id,
                "eos_id": self.tgt.eos_id}


def load_tokenizers(folder: str | Path) -> TokenizerPair:
    """Load the tokenizer(s) in `folder`: `tokenizer.model` if present, else the src/tgt pair."""
    folder = Path(folder)
    expected = f"expected {SHARED_FILE}, or {SRC_FILE} and {TGT_FILE}"
    if not folder.is_dir():
        raise TokenizerError(f"no tokenizer folder {folder} ({expected})")
    if (folder / SHARED_FILE).exists():
        shared = Tokenizer(folder / SHARED_FILE)
        return TokenizerPair(src=shared, tgt=shared)
    missing = [name for name in (SRC_FILE, TGT_FILE) if not (folder / name).exists()]
    if len(missing) == 2:
        raise TokenizerError(f"no tokenizer in {folder}: {expected}")
    if missing:
        raise TokenizerError(f"{folder} has no {missing[0]} ({expected})")
    return TokenizerPair(src=Tokenizer(folder / SRC_FILE), tgt=Tokenizer(folder / TGT_FILE))


def train_tokenizer(corpus: datasets.Dataset, out_dir: str | Path, *, vocab_size: int = 8000,
                    model_type: str = "unigram", shared: bool = True,
                    character_coverage: float = 1.0, sample_size: int = 1_000_000,
                    seed: int = 1, control_symbols: Sequence[str] = ()) -> TokenizerPair:
    """Train sentencepiece on a uniform random sample of `corpus` and write it to `out_dir`.

    `corpus` has string columns `src` and `tgt` (see `seq2seq.data.corpora.load_corpus`).
    At most `sample_size` non-empty sentences are drawn (reservoir sampling
    with `seed`), from both sides together when `shared`, else from each side
    for its own model. Writes `tokenizer.model` + `.vocab`, or the
    `tokenizer.src.*` and `tokenizer.tgt.*` pair; existing files are replaced
    only once training has succeeded.

    `control_symbols` (the language tags of seq2seq.data.directions) each get one
    id, after the special ones, in every model written: sentencepiece control
    symbols, which the caller inserts as ids, which no input text encodes to
    (a source line holding "<2fr>" cannot choose the language) and which
    decode to nothing.
    """
    out_dir = _tokenizer_folder(out_dir, vocab_size=vocab_size, model_type=model_type,
                                character_coverage=character_coverage, sample_size=sample_size)
    rng = random.Random(seed)
    if shared:
        samples = {SHARED_FILE: _reservoir_sample(_sentences(corpus, ("src", "tgt")), sample_size, rng)}
    else:
        samples = {SRC_FILE: _reservoir_sample(_sentences(corpus, ("src",)), sample_size, rng),
                   TGT_FILE: _reservoir_sample(_sentences(corpus, ("tgt",)), sample_size, rng)}
    return _write_models(samples, out_dir, shared=shared, vocab_size=vocab_size, model_type=model_type,
                         character_coverage=character_coverage, seed=seed, control_symbols=control_symbols)


# The sentences of each language of a run: language code -> a corpus and its column ("src" or "tgt")
# that holds that language (seq2seq.data.corpora.language_texts).
LanguageTexts = Mapping[str, "tuple[datasets.Dataset, str]"]


def train_balanced_tokenizer(sources: LanguageTexts, targets: LanguageTexts, out_dir: str | Path, *,
                             vocab_size: int = 8000, model_type: str = "unigram", shared: bool = True,
                             character_coverage: float = 1.0, sample_size: int = 1_000_000, seed: int = 1,
                             control_symbols: Sequence[str] = ()) -> TokenizerPair:
    """`train_tokenizer` for a run of several languages: each model is trained on an equal sample
    of every language it covers (all of them when `shared`, else the source languages for the
    source model and the target languages for the target one), so that a language with less
    text does not starve: its vocabulary would otherwise be cut up into short pieces.

    Each language gives min(sample_size // languages, the most sentences any of them has):
    a reservoir sample of a language with more than that, its sentences repeated in turn for one
    with fewer."""
    out_dir = _tokenizer_folder(out_dir, vocab_size=vocab_size, model_type=model_type,
                                character_coverage=character_coverage, sample_size=sample_size)
    rng = random.Random(seed)
    if shared:
        samples = {SHARED_FILE: _balanced_sample({**sources, **targets}, sample_size, rng)}
    else:
        samples = {SRC_FILE: _balanced_sample(sources, sample_size, rng),
                   TGT_FILE: _balanced_sample(targets, sample_size, rng)}
    return _write_models(samples, out_dir, shared=shared, vocab_size=vocab_size, model_type=model_type,
                         character_coverage=character_coverage, seed=seed, control_symbols=control_symbols)


def _tokenizer_folder(out_dir: str | Path, *, vocab_size: int, model_type: str, character_coverage: float,
                      sample_size: int) -> Path:
    """`out_dir`, created, once the training options are checked."""
    if model_type not in MODEL_TYPES:
        raise TokenizerError(f"unknown tokenizer model type {model_type!r}; "
                             f"choose from {', '.join(MODEL_TYPES)}")
    if vocab_size <= len(_SPECIAL_IDS):
        raise TokenizerError(f"vocab size {vocab_size} leaves no room for text: it must be larger "
                             f"than the {len(_SPECIAL_IDS)} special tokens (pad, unk, bos, eos)")
    # sentencepiece itself refuses coverage below 0.98, with an unhelpful message.
    if not 0.98 <= character_coverage <= 1.0:
        raise TokenizerError(f"character coverage must be between 0.98 and 1, got {character_coverage}")
    if sample_size <= 0:
        raise TokenizerError(f"tokenizer sample size must be positive, got {sample_size}")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TokenizerError(f"cannot create tokenizer folder {out_dir} ({err.strerror})") from None
    return out_dir


def _write_models(samples: dict[str, list[str]], out_dir: Path, *, shared: bool, vocab_size: int, model_type: str,
                  character_coverage: float, seed: int, control_symbols: Sequence[str]) -> TokenizerPair:
    """Train a model on each sample (by file name) and write them all to `out_dir`."""
    # Train every model before writing any, so a failure leaves the folder as it was.
    models = {}
    for file_name, sentences in samples.items():
        side = {SRC_FILE: "source ", TGT_FILE: "target "}.get(file_name, "")
        models[file_name] = _train_one(sentences, side, vocab_size=vocab_size, model_type=model_type,
                                       character_coverage=character_coverage, seed=seed,
                                       control_symbols=control_symbols)
    try:
        for file_name, model_bytes in models.items():
            atomic_write_bytes(out_dir / file_name, model_bytes)
            atomic_write_bytes(out_dir / _vocab_name(file_name), _vocab_text(model_bytes).encode("utf-8"))
        # A folder that held the other layout must not keep it: load_tokenizers
        # prefers the shared model and would silently pick a stale one.
        for file_name in (SRC_FILE, TGT_FILE) if shared else (SHARED_FILE,):
            (out_dir / file_name).unlink(missing_ok=True)
            (out_dir / _vocab_name(file_name)).unlink(missing_ok=True)
    except OSError as err:
        raise TokenizerError(f"cannot write the tokenizer to {out_dir} ({err.strerror})") from None
    return load_tokenizers(out_dir)


def _sentences(corpus: datasets.Dataset, columns: tuple[str, ...]) -> Iterator[str]:
    """Non-empty sentences of `columns`, read in batches so the corpus is never held whole."""
    for batch in corpus.select_columns(list(columns)).iter(batch_size=_READ_BATCH):
        for column in columns:
            for sentence in batch[column]:
                if sentence and not sentence.isspace():
                    yield sentence


def _balanced_sample(languages: LanguageTexts, size: int, rng: random.Random) -> list[str]:
    """An equal number of non-empty sentences of each language (see `train_balanced_tokenizer`), in
    the order of `languages`."""
    quota = max(size // max(len(languages), 1), 1)
    drawn = {lang: _reservoir_sample(_sentences(corpus, (column,)), quota, rng)
             for lang, (corpus, column) in languages.items()}
    each = max((len(sentences) for sentences in drawn.values()), default=0)
    # A language short of sentences repeats them: it weighs in the vocabulary as much as the others.
    return [sentence for sentences in drawn.values() if sentences
            for sentence in itertools.islice(itertools.cycle(sentences), each)]


def _reservoir_sample(sentences: Iterable[str], size: int, rng: random.Random) -> list[str]:
    """A uniform random sample of at most `size` items from a stream (Vitter's algorithm R)."""
    sample: list[str] = []
    for seen, sentence in enumerate(sentences):
        if seen < size:
            sample.append(sentence)
        else:
            slot = rng.randrange(seen + 1)
            if slot < size:
                sample[slot] = sentence
    return sample


def _train_one(sentences: list[str], side: str, *, vocab_size: int, model_type: str,
               character_coverage: float, seed: int, control_symbols: Sequence[str] = ()) -> bytes:
    """Run the sentencepiece trainer on `sentences`; the serialized model."""
    if not sentences:
        raise TokenizerError(f"no non-empty {side}sentences to train the tokenizer on")
    # Sentences go in through an iterator and the model comes back as bytes:
    # with file paths, sentencepiece records them inside the model, so the same
    # data and seed would give a different file (and sha256) in every folder.
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, control_symbols=list(control_symbols),
            input_sentence_size=0,  # 0 means use every sentence: the sample is already bounded
            num_threads=os.cpu_count() or 1, minloglevel=2)
    except (RuntimeError, ValueError) as err:
        raise TokenizerError(_explain_trainer_error(str(err), vocab_size, side), ("vocab_size",)) from None
    return model.getvalue()


def _explain_trainer_error(message: str, vocab_size: int, side: str) -> str:
    """A one-line, actionable version of a sentencepiece trainer error."""
    too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)",
                         message)
    if too_high:
        return (f"vocab size {vocab_size} is larger than this {side}corpus supports "
                f"(at most {too_high.group(2)}); lower {{vocab_size}}")
    too_small = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", message)
    if too_small:
        return (f"vocab size {vocab_size} is too small to hold the {too_small.group(1)} distinct "
                f"characters of this {side}corpus plus the special tokens; "
                "raise {vocab_size} or lower the character coverage")
    detail = message.splitlines()[0] if message else "unknown error"
    return f"sentencepiece could not train the {side}tokenizer: {detail}"


def _vocab_name(model_file: str) -> str:
    """`tokenizer.model` -> `tokenizer.vocab`."""
    return model_file.removesuffix(".model") + ".vocab"


def _vocab_text(model_bytes: bytes) -> str:
    """The `.vocab` listing sentencepiece writes beside a model: piece TAB score, one per id."""
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model_bytes)
    return "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
                   for i in range(processor.vocab_size()))
