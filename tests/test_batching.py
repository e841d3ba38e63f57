import numpy as np
import pyarrow as pa
import pytest
import torch

from seq2seq.batching import EpochBatches, TokenStore, collate, token_batches
from seq2seq.decode import length_batches


def test_batches_respect_the_token_budget_and_cover_every_pair_once():
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 50, 500), rng.integers(1, 50, 500)
    batches = token_batches(src, tgt, max_tokens=200, rng=np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for b in batches:
        assert len(b) * max(src[b].max(), tgt[b].max()) <= 200


def test_oversized_pair_gets_a_batch_of_its_own():
    batches = token_batches(np.array([5, 300, 5]), np.array([5, 5, 5]), max_tokens=100, rng=None)
    assert [len(b) for b in batches if 1 in b] == [1]


def test_epoch_order_is_reproducible_and_changes_between_epochs():
    lens = np.arange(1, 201) % 37 + 1
    a, b = EpochBatches(lens, lens, 256, seed=3), EpochBatches(lens, lens, 256, seed=3)
    assert all((x == y).all() for x, y in zip(a.epoch(2), b.epoch(2)))
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a.epoch(1), a.epoch(2)))


def test_ranks_get_disjoint_equal_shards():
    lens = np.arange(1, 301) % 29 + 1
    shards = [EpochBatches(lens, lens, 128, seed=1, rank=r, world_size=2).epoch(4) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    seen = [set(np.concatenate(s).tolist()) for s in shards]
    assert not seen[0] & seen[1]


def test_collate_shifts_targets_for_teacher_forcing():
    src = TokenStore(pa.array([[5, 6, 3], [7, 3]], type=pa.list_(pa.int32())))
    tgt = TokenStore(pa.array([[7, 3], [5, 6, 3]], type=pa.list_(pa.int32())))
    batch = collate(src, tgt, np.array([0, 1]), pad_id=0, bos_id=2)
    assert batch.src.tolist() == [[5, 6, 3], [7, 3, 0]]
    assert batch.tgt_out.tolist() == [[7, 3, 0], [5, 6, 3]]
    assert batch.tgt_in.tolist() == [[2, 7, 0], [2, 5, 6]]
    assert batch.n_tgt_tokens == 5
    assert batch.src.dtype == batch.tgt_in.dtype == torch.long


def test_token_store_handles_sliced_chunked_columns():
    column = pa.chunked_array([pa.array([[1], [2, 2]]), pa.array([[3, 3, 3]])]).slice(1)
    store = TokenStore(column)
    assert store.lengths.tolist() == [2, 3]
    assert store.padded(np.array([1, 0]), pad_id=0).tolist() == [[3, 3, 3], [2, 2, 0]]


def test_gathered_batches_equal_padding_each_row_by_hand():
    rng = np.random.default_rng(0)
    rows = [rng.integers(4, 50, size=rng.integers(1, 12)).tolist() for _ in range(40)]
    store = TokenStore(pa.array(rows, type=pa.list_(pa.int32())))
    index = rng.permutation(40)[:17]
    width = max(len(rows[i]) for i in index)
    expected = [rows[i] + [0] * (width - len(rows[i])) for i in index]
    shifted = [[2] + rows[i][:-1] + [0] * (width - len(rows[i])) for i in index]
    assert store.padded(index, pad_id=0).tolist() == expected
    assert collate(store, store, index, pad_id=0, bos_id=2).tgt_in.tolist() == shifted


# The two batchers as they were before `cut_batches` served both, kept as references.
def reference_token_batches(src_lens, tgt_lens, max_tokens, rng):
    n = len(src_lens)
    noise = rng.random(n) if rng is not None else np.arange(n)
    longest = np.maximum(src_lens, tgt_lens)
    order = np.lexsort((noise, src_lens, tgt_lens, longest))
    longest = longest[order]
    batches, start, width = [], 0, 0
    for i in range(n):
        new_width = max(width, int(longest[i]))
        if i > start and new_width * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, new_width = i, int(longest[i])
        width = new_width
    if n:
        batches.append(order[start:])
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def reference_length_batches(lengths, max_tokens):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@pytest.mark.parametrize("seed", range(20))
def test_training_and_decoding_batches_are_what_they_were(seed):
    """One budget rule (`cut_batches`) serves both batchers without changing a single batch."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    src, tgt = rng.integers(1, 60, n), rng.integers(1, 60, n)
    max_tokens = int(rng.choice([20, 64, 200, 1000]))  # small budgets put long pairs in batches of their own
    for make_rng in (lambda: np.random.default_rng([seed, 1]), lambda: None):
        new, old = token_batches(src, tgt, max_tokens, make_rng()), reference_token_batches(src, tgt, max_tokens,
                                                                                            make_rng())
        assert [b.tolist() for b in new] == [b.tolist() for b in old]
    lengths = src.tolist()
    assert length_batches(lengths, max_tokens) == reference_length_batches(lengths, max_tokens)
