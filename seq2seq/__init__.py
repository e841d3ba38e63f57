"""s2s: Transformer translation models, from tokenizer to BLEU."""

__version__ = "0.1.0"
