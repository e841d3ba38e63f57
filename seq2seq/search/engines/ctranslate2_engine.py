"""The CTranslate2 engine: a `ctranslate2.Translator` over a folder written by `s2s export`.

The folder is checked whole when it is opened (`seq2seq.runs.exported_folder.open_export`),
before anything is translated or a server says it is ready, and CTranslate2
loads the bytes that were checked rather than the folder.

It is run as `seq2seq.runs.ctranslate2_export` says, so that it computes what s2s computes:

- the source is its pieces then `</s>` (the row's EOS), with no BOS;
- beam search asks for all `beam` hypotheses with their raw log-probabilities
  (length_penalty 0) and re-ranks them with s2s's own length penalty
  (`length_penalty_factor`); a hypothesis that reached the length limit
  without EOS is the one whose length is the limit (`hit_limit`);
- every row has its own length limit (`seq2seq.search.prefix.output_limit`): one
  call per distinct limit;
- `min_decoding_length` is cfg.min_len; no `suppress_sequences` (it would
  renormalise each step's log-probabilities, unlike s2s);
- a row's prefix is its `target_prefix`. CTranslate2 returns it at the start
  of the hypotheses, counts it in max_decoding_length and min_decoding_length,
  and scores forced steps 0, as `seq2seq.search.prefix` does. A language tag
  comes in the rows or the prefixes, as the translator puts it there for
  either engine (seq2seq.search.translator).

Sampling maps onto CTranslate2's (beam 1, sampling_topk, sampling_topp,
sampling_temperature); cfg.seed seeds CTranslate2's random generator
(`ctranslate2.set_random_seed`, which is process-wide).
"""

from __future__ import annotations

import os
from pathlib import Path

from ...config import DecodeConfig, TrainConfig
from ...data.tokenizer import TokenizerPair
from ...errors import ConfigError, RunDirError
from ...runs.exported_folder import MODEL_FILE, import_ctranslate2, open_export
from ..hypotheses import Hypothesis, check_rows, check_search, penalised_score, unsearched
from ..prefix import output_limit
from . import languages


def ctranslate2_device(device: str, ctranslate2) -> tuple[str, int]:
    """CTranslate2's device and index for `device`: auto (CUDA when CTranslate2 sees a GPU, else
    the CPU), cpu, cuda or cuda:N; a ConfigError for any other."""
    if device == "auto":
        return ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"), 0
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ConfigError(f"CTranslate2 runs on the CPU or CUDA, not {device}: use {{device}} cpu or cuda", ("device",))
    return kind, int(index or 0)


class CTranslate2Engine:
    """Searches with CTranslate2 over an exported folder; the tokenizers are the ones exported with it."""

    name = "ctranslate2"

    def __init__(self, translator, tokenizers: TokenizerPair, max_positions: int, cfg: DecodeConfig,
                 info: dict | None = None, train: TrainConfig | None = None):
        """`train`: the exported run's config, for its languages (`Engine.train`)."""
        check_search(cfg, tokenizers.tgt.vocab_size)
        self.translator, self.tokenizers, self.cfg, self.train = translator, tokenizers, cfg, train
        self.info = info or {}  # s2s_export.json
        self.max_positions = max_positions
        self.tgt_vocab_size = tokenizers.tgt.vocab_size
        self.src_pieces = tokenizers.src.pieces()
        self.tgt_pieces = tokenizers.tgt.pieces()
        self.tgt_index = {piece: i for i, piece in enumerate(tokenizers.tgt.pieces())}

    @classmethod
    def open(cls, folder: Path | str, device: str, cfg: DecodeConfig, weights: str | None = None,
             threads: int | None = None) -> "CTranslate2Engine":
        """The engine for an exported folder on `device`: auto, cpu, cuda or cuda:N (a torch.device
        does too, by its name)."""
        folder = Path(folder)
        ctranslate2 = import_ctranslate2("running an exported model")
        exported = open_export(folder)
        info = exported.info
        if weights is not None and weights != info.get("weights"):
            raise ConfigError(f"{folder} holds one model, exported from {info.get('weights')}; {{weights}} picks "
                              f"a weights file in a run directory: export {weights} to its own folder "
                              "(s2s export --weights) and translate with that", ("weights",))
        kind, index = ctranslate2_device(str(device), ctranslate2)
        options = dict(device=kind, inter_threads=1)
        if kind == "cuda":
            options["device_index"] = index
        if threads is not None:
            options["intra_threads"] = threads
        if cfg.sampling and cfg.seed is not None:
            ctranslate2.set_random_seed(cfg.seed)
        # With `files`, the path only names the model, and CTranslate2 takes UTF-8 text only.
        name = os.fsencode(folder).decode("utf-8", "replace")
        try:
            translator = ctranslate2.Translator(name, files=exported.model_files, **options)
        except (RuntimeError, ValueError) as err:
            raise RunDirError(f"{folder / MODEL_FILE}: CTranslate2 cannot load this model ({err})") from None
        info["bytes"] = len(exported.model_files[MODEL_FILE])
        return cls(translator, exported.tokenizers, int(info["max_positions"]), cfg, info, exported.config.train)

    def with_config(self, cfg: DecodeConfig) -> "CTranslate2Engine":
        return CTranslate2Engine(self.translator, self.tokenizers, self.max_positions, cfg, self.info, self.train)

    def describe(self) -> dict:
        info = self.info
        return dict(engine=self.name, **languages(self.train),
                    weights=info.get("weights"), bytes=info.get("bytes"), parameters=None,
                    quantization=info.get("quantization"), model=info.get("run_config", {}).get("model"),
                    precision=f"CTranslate2 {self.translator.compute_type} on {self.translator.device}")

    def check_attention_layer(self, layer: int, name: str) -> None:
        raise ConfigError("{" + name + "}: the CTranslate2 engine gives no attention weights to choose from (an "
                          "export keeps one fixed alignment head); give {model} the run directory it was exported "
                          "from, which the torch engine runs", (name, "model"))

    def cross_attention(self, rows: list[list[int]], outputs: list[list[int]], layer: int) -> list:
        raise NotImplementedError("the CTranslate2 engine gives no attention weights (check_attention_layer says so)")

    def search(self, rows: list[list[int]], prefixes: list[list[int]] | None = None) -> list[list[Hypothesis]]:
        check_rows(rows, prefixes, self.max_positions)
        prefixes = prefixes or [[] for _ in rows]
        results = [unsearched(ids, prefix) for ids, prefix in zip(rows, prefixes)]
        by_limit: dict[int, list[int]] = {}
        for i, ids in enumerate(rows):
            if ids:
                limit = output_limit(len(ids), len(prefixes[i]), self.cfg, self.max_positions)
                by_limit.setdefault(limit, []).append(i)
        for limit, indices in sorted(by_limit.items()):
            if limit == 0:  # nothing can be output: the empty hypothesis, cut at the limit
                for i in indices:
                    results[i] = [Hypothesis(tokens=[], score=0.0, logprob=0.0, hit_limit=True)]
                continue
            target_prefix = None
            if any(prefixes[i] for i in indices):
                target_prefix = [[self.tgt_pieces[t] for t in prefixes[i]] for i in indices]
            found = self.translator.translate_batch([[self.src_pieces[t] for t in rows[i]] for i in indices],
                                                    target_prefix=target_prefix, **self._options(limit))
            for i, result in zip(indices, found):
                results[i] = self._hypotheses(result, limit, len(prefixes[i]))
        return results

    def _options(self, limit: int) -> dict:
        cfg = self.cfg
        options = dict(max_decoding_length=limit, min_decoding_length=min(cfg.min_len, limit),
                       return_scores=True, length_penalty=0.0, max_input_length=0,
                       max_batch_size=cfg.max_tokens, batch_type="tokens")
        if cfg.sampling:
            # sampling_topk 0 samples from the whole distribution, as s2s's top_k 0 does.
            return dict(options, beam_size=1, num_hypotheses=1, sampling_topk=cfg.top_k,
                        sampling_topp=cfg.top_p, sampling_temperature=cfg.temperature)
        return dict(options, beam_size=cfg.beam, num_hypotheses=cfg.beam)

    def _hypotheses(self, result, limit: int, prefix_length: int) -> list[Hypothesis]:
        """The result's hypotheses as s2s scores them, best first."""
        cfg = self.cfg
        hypotheses = []
        for tokens, logprob in zip(result.hypotheses, result.scores):
            ids = [self.tgt_index[token] for token in tokens]
            hit_limit = len(ids) >= limit
            if cfg.sampling or cfg.beam == 1:
                score = logprob  # as s2s's greedy search and sampling score
            else:  # an output that ended with EOS counts it; the prefix is not counted
                score = penalised_score(logprob, len(ids) + (not hit_limit) - prefix_length, cfg.length_penalty,
                                        cfg.alpha)
            hypotheses.append(Hypothesis(tokens=ids, score=score, logprob=logprob, hit_limit=hit_limit))
        hypotheses.sort(key=lambda h: -h.score)  # stable: CTranslate2's order breaks ties
        return hypotheses
