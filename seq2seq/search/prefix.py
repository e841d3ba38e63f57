"""Target prefixes: outputs that must start with given tokens.

Post-editing tools and terminology workflows give the start of a translation
and ask the engine to go on from there. The search forces a row's prefix
tokens, one per step, then searches on, as fairseq's `prefix_tokens` and
CTranslate2's `target_prefix` do. Both engines keep the same rules:

- A forced token is given, not chosen: it adds 0 to the hypothesis'
  log-probability, and the length penalty counts only the tokens after the
  prefix (CTranslate2 scores forced steps 0 too).
- The output length limit counts the whole output but is raised by the
  prefix's length, so a prefix never takes room from the rest of the
  translation (`output_limit`); `min_len` counts the whole output.
- An empty source with a prefix gives the prefix itself, without running the
  model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import DecodeConfig
from ..errors import DataError

if TYPE_CHECKING:  # torch is imported by the search that forces prefixes, not by the CTranslate2 engine
    import torch
    from torch import Tensor


def output_limit(source_length: int, prefix_length: int, cfg: DecodeConfig, max_positions: int) -> int:
    """The most tokens the output of a source row of `source_length` ids (EOS included) may have,
    its prefix included: int(max_len_a * len + max_len_b) after the prefix, within max_positions - 1."""
    return min(int(cfg.max_len_a * source_length + cfg.max_len_b) + prefix_length, max_positions - 1)


def check_prefix_lengths(prefixes: list[list[int]], max_positions: int, first_line: int = 1) -> None:
    """DataError naming the first line whose prefix is longer than any output the model can write."""
    for number, ids in enumerate(prefixes, start=first_line):
        if len(ids) > max_positions - 1:
            raise DataError(f"the target prefix of line {number} is {len(ids)} tokens long, more than the "
                            f"{max_positions - 1} tokens of the longest output the model can write")


class ForcedPrefix:
    """The prefix tokens still to be forced on the rows of a search batch.

    tokens: (N, P) long, each row's prefix padded with -1 to the longest, P.
    Rows follow the search's batch: `select` reorders them as beams move and
    finished rows leave.
    """

    def __init__(self, prefixes: list[list[int]], device: torch.device):
        import torch

        width = max(map(len, prefixes), default=0)
        self.tokens = torch.tensor([ids + [-1] * (width - len(ids)) for ids in prefixes],
                                   dtype=torch.long, device=device).view(len(prefixes), width)  # (N, P)

    @property
    def width(self) -> int:
        """The longest prefix: no token is forced from this step on."""
        return self.tokens.size(1)

    def select(self, rows: Tensor) -> None:
        """Keep the rows `rows` (N',), in that order, as the search's batch does."""
        self.tokens = self.tokens.index_select(0, rows)  # (N', P)

    def force(self, logprobs: Tensor, step: int, first_row: int = 0) -> None:
        """Make each row's prefix token at `step` the only possible one, at log-probability 0 (in place).

        logprobs: (C, V), for the rows first_row ... first_row + C - 1. Rows
        past their prefix are left as they are.
        """
        if step >= self.width:
            return
        token = self.tokens[first_row:first_row + logprobs.size(0), step]  # (C,)
        rows = token.ge(0).nonzero().squeeze(1)  # (F,): rows whose prefix goes on at this step
        if rows.numel() == 0:
            return
        logprobs.index_fill_(0, rows, float("-inf"))
        logprobs[rows, token[rows]] = 0.0
