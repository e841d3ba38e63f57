"""What every search shares, whatever its engine: the hypotheses it finds, how they are scored,
and the settings and source rows it accepts.

Nothing here imports torch: the CTranslate2 engine searches without it
(`seq2seq.search.engines.ctranslate2_engine`); s2s's own search is `seq2seq.search.decode`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import LENGTH_PENALTIES, DecodeConfig
from ..errors import ConfigError, field_error


@dataclass
class Hypothesis:
    """One finished output of a search."""

    tokens: list[int]  # output ids, without BOS and without the final EOS
    score: float  # length-penalised log-probability: what beams are ranked by
    logprob: float  # raw sum of token log-probabilities, EOS included unless hit_limit
    hit_limit: bool = False  # cut at the length limit without EOS


def length_penalty_factor(length: int, kind: str, alpha: float) -> float:
    """The divisor of a hypothesis' log-probability: score = logprob / factor.

    `length` counts the tokens whose log-probabilities are in the sum: for an
    output that ended with EOS, its tokens and the EOS; for one cut at the
    length limit (`Hypothesis.hit_limit`), which has no EOS, its tokens only.
    Both kinds finish at the same step with the same length: at a limit of L,
    an output of L - 1 tokens and EOS, and a cut one of L tokens, have length L.
    (An output cut at a limit of 0 has length 0 and score 0 without a division.)
    "gnmt" is ((5 + len) / 6) ** alpha (Wu et al. 2016), "average" is
    len ** alpha, "none" is 1.
    """
    if kind == "gnmt":
        return ((5 + length) / 6) ** alpha
    if kind == "average":
        return length ** alpha
    if kind == "none":
        return 1.0
    raise ValueError(f"unknown length penalty {kind!r}; choose from {', '.join(LENGTH_PENALTIES)}")


def penalised_score(logprob: float, length: int, kind: str, alpha: float) -> float:
    """What beam search ranks by: logprob / `length_penalty_factor`; 0 for an output of length 0."""
    return logprob / length_penalty_factor(length, kind, alpha) if length else 0.0


def check_search(cfg: DecodeConfig, tgt_vocab_size: int) -> None:
    """ConfigError for a search the model cannot run: a beam wider than its target vocabulary
    (sampling ignores the beam). Checked where a search meets a model: when an engine opens.

    The batch holds up to `beam` rows per sentence, so an absurd beam exhausts
    memory before it finishes; a search wider than the vocabulary has pieces
    is never a sensible setting.
    """
    if not cfg.sampling and cfg.beam > tgt_vocab_size:
        raise ConfigError(f"{{beam}} {cfg.beam} is more than the target vocabulary ({tgt_vocab_size} pieces); "
                          f"use at most {tgt_vocab_size}", ("beam",))


def check_nbest(nbest: int, cfg: DecodeConfig) -> None:
    """ConfigError unless the search `cfg` describes can give `nbest` (>= 1) hypotheses per line:
    checked where the number is asked for (a command's option, a request's field)."""
    if nbest < 1:
        raise field_error("nbest", f"must be positive, got {nbest}")
    if cfg.sampling:
        raise ConfigError("{nbest} needs beam search; {sampling} gives one output per line", ("nbest", "sampling"))
    if nbest > cfg.beam:
        raise ConfigError(f"{{nbest}} {nbest} is more than {{beam}} {cfg.beam}; beam search finds at most "
                          "{beam} hypotheses", ("nbest", "beam"))


def check_rows(src_ids: list[list[int]], prefixes: list[list[int]] | None, max_positions: int) -> None:
    """ValueError for source rows the model cannot read, or prefixes that are not one per row: what
    the caller (seq2seq.search.translator) makes fit before it searches."""
    for line, ids in enumerate(src_ids, start=1):
        if len(ids) > max_positions:
            raise ValueError(f"source row {line} has {len(ids)} tokens, more than the model's "
                             f"max_positions ({max_positions}); split or drop long lines before decoding")
    if prefixes is not None and len(prefixes) != len(src_ids):
        raise ValueError(f"{len(prefixes)} prefixes for {len(src_ids)} source rows")


def unsearched(ids: list[int], prefix: list[int] | None) -> list[Hypothesis]:
    """The answer to an empty source row: its prefix (or nothing), with score 0."""
    return [Hypothesis(tokens=list(prefix or []), score=0.0, logprob=0.0)]
