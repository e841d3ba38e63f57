"""Small shared fixtures' building blocks: a slice of the bundled corpus, a tiny training recipe."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import torch

from seq2seq.config import ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
MULTI30K = ROOT / "data" / "multi30k"


def write_slice(folder: Path, split: str = "train", n: int = 400, name: str = "corpus",
                langs: tuple[str, ...] = ("en", "de")) -> str:
    """The first `n` lines of a bundled Multi30k split as plain files; returns the corpus prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(n)]
        (folder / f"{name}.{lang}").write_text("".join(lines), encoding="utf-8")
    return str(folder / name)


def tiny_model_config() -> ModelConfig:
    return ModelConfig(d_model=32, n_heads=2, ffn_dim=64, encoder_layers=1, decoder_layers=1,
                       dropout=0.1, max_positions=128)


def tiny_train_config(train: str, valid: str, **overrides) -> TrainConfig:
    values = dict(train=train, valid=valid, vocab_size=200, max_len=64, max_tokens=600, epochs=2,
                  lr=3e-3, warmup_steps=10, log_every=5, patience=0, seed=7)
    values.update(overrides)
    return TrainConfig(**values)


def make_untrained_run(folder: Path, max_positions: int = 1024, **model_fields) -> Path:
    """A complete run directory (config, shared 150-piece tokenizer, weights) of an untrained model;
    `model_fields` change its ModelConfig (a variant: attention="performer", ...).

    Enough for everything that loads a run or checks its input without needing good translations.
    """
    from seq2seq.data.corpora import load_corpus
    from seq2seq.data.tokenizer import train_tokenizer

    tokenizers = train_tokenizer(load_corpus(write_slice(folder / "corpus", "val", 300), "en", "de"), folder,
                                 vocab_size=150)
    return _write_untrained_run(folder, tokenizers, TrainConfig(), max_positions, **model_fields)


def make_untrained_multilingual_run(folder: Path, lang_tag: str = "source", tgt_lang: str = "de,fr",
                                    max_positions: int = 1024) -> Path:
    """As `make_untrained_run`, a run of a model that translates English into each language of `tgt_lang`,
    told which by a tag placed as `lang_tag` says (seq2seq.data.directions): its shared 200-piece tokenizer
    is trained over the languages' Multi30k slices, with each target's tag as one piece.

    The model is all but untrained: a few updates on tagged pairs (`_teach_the_tags`) make its outputs
    differ by target, which a model that has never seen a tag barely does. They also make BOS and
    padding improbable outputs, as training does: s2s's search never writes either, but CTranslate2's
    would, so that both engines' outputs can be compared."""
    import datasets

    from seq2seq.data.corpora import load_corpus
    from seq2seq.data.directions import language_tag, tagged_languages, target_languages
    from seq2seq.data.tokenizer import train_tokenizer

    targets = target_languages(tgt_lang)
    corpus = write_slice(folder / "corpus", "val", 300, langs=("en", *targets))
    pairs = {lang: load_corpus(corpus, "en", lang) for lang in targets}
    tokenizers = train_tokenizer(datasets.concatenate_datasets(list(pairs.values())), folder, vocab_size=200,
                                 control_symbols=[language_tag(lang) for lang in tagged_languages(tgt_lang)])
    train = TrainConfig(tgt_lang=tgt_lang, lang_tag=lang_tag)

    return _write_untrained_run(folder, tokenizers, train, max_positions,
                                lambda model: _teach_the_tags(model, tokenizers, pairs, lang_tag))


def _teach_the_tags(model, tokenizers, pairs: dict, lang_tag: str, steps: int = 40, rows: int = 32) -> None:
    """A few updates of `model` on the first `rows` pairs of each target language's `pairs` (datasets
    with `src` and `tgt`), tagged as `lang_tag` says, cut to 24 pieces a side."""
    from seq2seq.data.directions import language_tag

    pad, bos, eos = model.cfg.pad_id, model.cfg.bos_id, model.cfg.eos_id
    vocabulary = tokenizers.src.pieces()

    def padded(sequences: list[list[int]]) -> torch.Tensor:
        width = max(map(len, sequences))
        return torch.tensor([ids + [pad] * (width - len(ids)) for ids in sequences])

    batches = []
    for lang, corpus in pairs.items():
        tag = [vocabulary.index(language_tag(lang))]
        source = [ids[:24] for ids in tokenizers.src.encode(corpus["src"][:rows])]
        target = [ids[:24] for ids in tokenizers.tgt.encode(corpus["tgt"][:rows])]
        if lang_tag == "source":
            source, target_in = [tag + ids + [eos] for ids in source], [[bos] + ids for ids in target]
        else:
            source, target_in = [ids + [eos] for ids in source], [[bos] + tag + ids for ids in target]
        batches.append((padded(source), padded(target_in), padded([ids[1:] + [eos] for ids in target_in])))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only waits on its threads, more so on a busy machine
    model.train()
    try:
        for _ in range(steps):
            for source, target_in, target_out in batches:
                logits = model.decode(target_in, *model.encode(source))
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_out.flatten(),
                                                         ignore_index=pad)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        model.eval()
        torch.set_num_threads(threads)


def _write_untrained_run(folder: Path, tokenizers, train: TrainConfig, max_positions: int, prepare=None,
                         **model_fields) -> Path:
    """config.json (`train`, and a tiny model for the shared `tokenizers` in `folder`) and seeded weights,
    changed by `prepare(model)` first if given."""
    from seq2seq.config import RunConfig
    from seq2seq.files.atomic import atomic_write_text
    from seq2seq.model.transformer import build_model
    from seq2seq.runs.weights import save_weights

    vocab_size = tokenizers.src.vocab_size
    cfg = ModelConfig(src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, d_model=16, n_heads=2, ffn_dim=32,
                      encoder_layers=1, decoder_layers=1, max_positions=max_positions, **model_fields)
    atomic_write_text(folder / "config.json", RunConfig(model=cfg, train=train, tokenizer_sha256={
        tokenizers.src.path.name: tokenizers.src.sha256}).to_json())
    torch.manual_seed(0)
    model = build_model(cfg)
    if prepare is not None:
        prepare(model)
    save_weights(model, folder / "model.safetensors")
    return folder


class EosFirst(torch.nn.Module):
    """A model wrapper that adds `bias` to the EOS logit: left alone, it would end every output at once."""

    def __init__(self, inner: torch.nn.Module, bias: float = 30.0):
        super().__init__()
        self.inner, self.cfg, self.bias = inner, inner.cfg, bias

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.encode(src)

    def decoder_states(self, tgt_in: torch.Tensor, memory: torch.Tensor | None, src_mask: torch.Tensor,
                       cache=None) -> torch.Tensor:
        return self.inner.decoder_states(tgt_in, memory, src_mask, cache)

    def output_logits(self, states: torch.Tensor) -> torch.Tensor:
        logits = self.inner.output_logits(states)  # (..., V)
        return logits + self.bias * torch.nn.functional.one_hot(torch.tensor(self.cfg.eos_id), logits.size(-1))

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor | None, src_mask: torch.Tensor,
               cache=None) -> torch.Tensor:
        return self.output_logits(self.decoder_states(tgt_in, memory, src_mask, cache))

    def cross_attention(self, src: torch.Tensor, tgt_in: torch.Tensor, layer: int) -> torch.Tensor:
        return self.inner.cross_attention(src, tgt_in, layer)


class LogitsAsStates:
    """For a fake model whose `decode` gives logits directly: the search asks for decoder states
    and projects them with `output_logits`, which here passes the logits through."""

    def decoder_states(self, *args, **kwargs) -> torch.Tensor:
        return self.decode(*args, **kwargs)

    def output_logits(self, states: torch.Tensor) -> torch.Tensor:
        return states


def one_error_line(result) -> str:
    """The message of a CliRunner result that failed as every s2s failure must: exit 1, one `error:` line."""
    assert result.exit_code == 1, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    return message


def assert_resumes_exactly(cfg: TrainConfig, folder: Path, stop: int | Callable[[list[dict]], int],
                           end: int) -> list[dict]:
    """Train `cfg` (a tiny model, on the CPU) straight to update `end` in folder/"a"; and in folder/"b" to
    update `stop`, then resumed to `end`. The stopped and resumed run logs the losses of the one that never
    stopped, and its last checkpoint holds the same weights, bit for bit. `stop` may be a function of the
    straight run's events. Returns those events."""
    import dataclasses
    import json

    from safetensors.torch import load_file

    from seq2seq.runs.run_dir import read_run_config
    from seq2seq.training.run import train

    run_a, run_b, cpu = folder / "a", folder / "b", torch.device("cpu")
    straight, first, second = [], [], []
    train(run_a, tiny_model_config(), dataclasses.replace(cfg, max_steps=end), cpu, on_event=straight.append)
    stop = stop(straight) if callable(stop) else stop
    train(run_b, tiny_model_config(), dataclasses.replace(cfg, max_steps=stop), cpu, on_event=first.append)
    train(run_b, read_run_config(run_b).model, dataclasses.replace(cfg, max_steps=end), cpu, resume=True,
          on_event=second.append)
    loss = lambda events: [(e["step"], e["loss"]) for e in events if e["event"] == "train"]
    assert loss(first) + loss(second) == loss(straight)
    last = lambda run: run / "checkpoints" / json.loads((run / "checkpoints" / "last.json").read_text())["dir"]
    a, b = (load_file(str(last(run) / "model.safetensors")) for run in (run_a, run_b))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    return straight
