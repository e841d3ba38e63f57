"""`s2s tokenizer train`: a sentencepiece tokenizer from a corpus.

datasets and sentencepiece are imported inside the command, so that `--help` never loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seq2seq.config import TrainConfig, language_codes
from seq2seq.data.corpus_specs import corpus_paths
from seq2seq.errors import ConfigError
from seq2seq.files.outputs import new_folder
from seq2seq.files.reads import Reads, refuse_clobbering, refuse_stdout_clobbering

from .display import stderr


def tokenizer_train_command(
    corpus: Annotated[str, typer.Option("--corpus", help="Corpus spec (see README).")] = "data/multi30k/train",
    src: Annotated[str, typer.Option(help="Source language code; several, comma-separated, for a model of "
                                     "many directions.")] = "en",
    tgt: Annotated[str, typer.Option(help="Target language code; several, comma-separated (de,fr,cs): the "
                                     "tokenizer then has a <2xx> tag for each, and an equal sample of every "
                                     "language.")] = "de",
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the tokenizer to.")]
    = Path("runs/tokenizer"),
    vocab_size: Annotated[int, typer.Option(help="Pieces per vocabulary.")] = 8000,
    model_type: Annotated[str, typer.Option(help="unigram or bpe.")] = "unigram",
    separate: Annotated[bool, typer.Option("--separate", help="One vocabulary per language "
                                           "instead of one shared.")] = False,
    character_coverage: Annotated[float, typer.Option(help="Share of characters covered by the "
                                                      "vocabulary; rarer ones map to <unk>.")] = 1.0,
    sample_size: Annotated[int, typer.Option(help="Train on a random sample of at most this many "
                                             "sentences.")] = 1_000_000,
    seed: Annotated[int, typer.Option(help="Seed for the sample.")] = 1,
) -> None:
    """Train a sentencepiece tokenizer; writes tokenizer.model and tokenizer.vocab to --output."""
    languages = [*language_codes(src), *language_codes(tgt)]
    reads = Reads().paths("the corpus", *corpus_paths(corpus, languages))
    refuse_stdout_clobbering(reads)  # first: it needs none of the imports below
    import datasets

    from seq2seq.data.corpora import language_texts, load_directions
    from seq2seq.data.directions import language_tag, tagged_languages
    from seq2seq.data.tokenizer import train_balanced_tokenizer, train_tokenizer
    from seq2seq.files.run_layout import CONFIG_FILE, TOKENIZER_FILES

    # s2s reports what it does in its own lines; datasets' bars would interleave with them.
    datasets.disable_progress_bars()
    if sample_size <= 0:
        raise ConfigError(f"--sample-size must be positive, got {sample_size}")
    if not 0.0 < character_coverage <= 1.0:  # NaN fails this too
        raise ConfigError(f"--character-coverage must be in (0, 1], got {character_coverage}")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: exists and is not a folder")
    if (output / CONFIG_FILE).is_file():
        raise ConfigError(f"--output {output} is a run directory; its tokenizer is the one its model was "
                          "trained with and must not change. Choose another folder")
    for name in TOKENIZER_FILES:
        refuse_clobbering("output", output / name, reads)
    try:
        directions = TrainConfig(src_lang=src, tgt_lang=tgt).directions  # checks the codes
    except ConfigError as err:  # named as this command's options, not `s2s train`'s
        raise ConfigError(err.named({"src_lang": "--src", "tgt_lang": "--tgt"}.__getitem__)) from None
    parts = load_directions(corpus, directions)
    options = dict(vocab_size=vocab_size, model_type=model_type, shared=not separate,
                   character_coverage=character_coverage, sample_size=sample_size, seed=seed)
    with new_folder(output, "output", leftovers=()):
        if len(directions) == 1:
            tokenizers = train_tokenizer(parts[0], output, **options)
        else:
            tags = [language_tag(lang) for lang in tagged_languages(tgt)]
            tokenizers = train_balanced_tokenizer(*language_texts(directions, parts), output, **options,
                                                  control_symbols=tags)
    for path in tokenizers.files():
        stderr.print(f"wrote {path} ({path.with_suffix('.vocab').name} beside it)")
