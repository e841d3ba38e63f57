"""Data: corpora, their columns, tokenizers, encoding, token stores and batches."""
