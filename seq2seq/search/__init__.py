"""Search and engines: hypotheses, greedy, sampling and beam search, prefixes, engines, the translator."""
