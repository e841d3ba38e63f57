"""Corpus scores from sacreBLEU (BLEU, chrF, TER), each with its signature.

A score means little without the settings behind it, so every score carries
sacreBLEU's signature string (tokenizer, casing, smoothing, version), as
JoeyNMT logs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

from .errors import ConfigError, DataError

METRICS = ("bleu", "chrf", "ter")
_DISPLAY_NAMES = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER"}


@dataclass
class MetricScore:
    """One corpus-level score and how it was computed."""

    name: str  # "BLEU", "chrF" or "TER"
    score: float
    signature: str  # e.g. "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
    detail: str  # sacreBLEU's score line, e.g. "BLEU = 35.21 68.1/43.2/29.5/20.6 (BP = ...)"


def _build_metric(name: str, lowercase: bool, tokenize: str | None) -> Metric:
    """A sacreBLEU metric object with our options mapped onto its own."""
    if name == "bleu":
        try:
            # tokenize=None lets sacreBLEU pick its default, 13a.
            return BLEU(lowercase=lowercase, tokenize=tokenize)
        except (ImportError, RuntimeError, OSError) as err:
            # Some tokenizers need an extra package (ja-mecab, ko-mecab) or a download (flores).
            reason = " ".join(str(err).split())
            raise ConfigError(f"sacreBLEU's {tokenize!r} tokenizer is not available: {reason}") from None
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    # TER has its own tokenizer (tercom) rather than BLEU's, so `tokenize` does not
    # apply. sacreBLEU's TER is case-insensitive by default; here casing follows
    # `lowercase` like the other metrics, so "mixed" means mixed for all three.
    return TER(case_sensitive=not lowercase)


def _check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                  metrics: Sequence[str], tokenize: str | None) -> None:
    """Refuse what sacreBLEU would reject with a traceback, or silently score wrongly."""
    if not metrics:
        raise ConfigError(f"no metrics requested; choose from {', '.join(METRICS)}")
    unknown = [m for m in metrics if m.lower() not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(METRICS)}")
    if tokenize is not None and tokenize not in BLEU.TOKENIZERS:
        raise ConfigError(f"unknown BLEU tokenizer {tokenize!r}; "
                          f"sacreBLEU offers {', '.join(BLEU.TOKENIZERS)}")
    if not hypotheses:
        raise DataError("no hypotheses to score")
    if not references:
        raise DataError("no references to score against")
    for number, lines in enumerate(references, start=1):
        # sacreBLEU zips hypotheses with references, so a short file would be cut silently.
        if len(lines) != len(hypotheses):
            raise DataError(f"reference set {number} has {len(lines)} lines "
                            f"but there are {len(hypotheses)} hypotheses")


def score_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                 metrics: Sequence[str] = METRICS, lowercase: bool = False,
                 tokenize: str | None = None) -> list[MetricScore]:
    """Corpus BLEU, chrF and/or TER of `hypotheses`, in the order `metrics` names them.

    references: one list of lines per reference set, each as long as `hypotheses`.
    lowercase: case-insensitive scoring for all three metrics.
    tokenize: sacreBLEU's tokenizer for BLEU (None means its default, 13a);
    chrF works on characters and TER uses its own tokenizer, so neither takes it.
    Raises ConfigError for unknown metrics or tokenizers and DataError for empty
    or misaligned input.
    """
    # A bare "bleu" would otherwise be read as the metrics "b", "l", "e", "u".
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    _check_inputs(hypotheses, references, names, tokenize)
    scores = []
    for name in dict.fromkeys(m.lower() for m in names):  # each metric once, in order
        metric = _build_metric(name, lowercase, tokenize)
        result = metric.corpus_score(list(hypotheses), [list(lines) for lines in references])
        scores.append(MetricScore(name=_DISPLAY_NAMES[name], score=float(result.score),
                                  signature=str(metric.get_signature()), detail=str(result)))
    return scores


def scores_to_json(scores: list[MetricScore]) -> dict[str, dict[str, float | str]]:
    """{"bleu": {"score": ..., "signature": ..., "detail": ...}, ...}, keyed by lowercase name."""
    return {s.name.lower(): {"score": s.score, "signature": s.signature, "detail": s.detail}
            for s in scores}
