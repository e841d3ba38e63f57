import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from seq2seq.data.batching import EpochBatches, collate, cut_batches, token_batches
from seq2seq.data.token_store import DeviceTokenStore, MappedTokenStore, resolve_placement, token_store
from seq2seq.search.decode import length_batches

# Every behaviour of a token store holds for both: each test runs on each.
STORES = pytest.mark.parametrize("store_class", [DeviceTokenStore, MappedTokenStore])


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


@STORES
def test_collate_shifts_targets_for_teacher_forcing(store_class):
    src = store_class(pa.array([[5, 6, 3], [7, 3]], type=pa.list_(pa.int32())))
    tgt = store_class(pa.array([[7, 3], [5, 6, 3]], type=pa.list_(pa.int32())))
    batch = collate(src, tgt, np.array([0, 1]), pad_id=0, bos_id=2)
    assert batch.src.tolist() == [[5, 6, 3], [7, 3, 0]]
    assert batch.tgt_out.tolist() == [[7, 3, 0], [5, 6, 3]]
    assert batch.tgt_in.tolist() == [[2, 7, 0], [2, 5, 6]]
    assert batch.n_tgt_tokens == 5
    assert batch.src.dtype == batch.tgt_in.dtype == torch.long


@STORES
def test_token_store_handles_sliced_chunked_columns(store_class):
    column = pa.chunked_array([pa.array([[1], [2, 2]], type=pa.list_(pa.int32())),
                               pa.array([[3, 3, 3]], type=pa.list_(pa.int32()))]).slice(1)
    store = store_class(column)
    assert store.lengths.tolist() == [2, 3]
    assert store.padded(np.array([1, 0]), pad_id=0).tolist() == [[3, 3, 3], [2, 2, 0]]


def many_chunks(rows: list[list[int]], rng: np.random.Generator) -> pa.ChunkedArray:
    """`rows` as a chunked column cut at random places, each chunk a slice of a larger array,
    as the record batches of a `datasets` cache file are."""
    cuts = sorted(rng.choice(np.arange(1, len(rows)), size=6, replace=False).tolist())
    chunks = []
    for start, end in zip([0] + cuts, cuts + [len(rows)]):
        padded = [[99]] + rows[start:end] + [[98, 98]]  # rows outside the slice must never be read
        chunks.append(pa.array(padded, type=pa.list_(pa.int32())).slice(1, end - start))
    return pa.chunked_array(chunks)


@STORES
@pytest.mark.parametrize("chunked", [False, True])
def test_gathered_batches_equal_padding_each_row_by_hand(store_class, chunked):
    rng = np.random.default_rng(0)
    rows = [rng.integers(4, 50, size=rng.integers(1, 12)).tolist() for _ in range(40)]
    column = many_chunks(rows, rng) if chunked else pa.array(rows, type=pa.list_(pa.int32()))
    store = store_class(column)
    assert len(store) == 40 and store.lengths.tolist() == [len(row) for row in rows]
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


def reference_cut_batches(order, widths, max_tokens):
    """cut_batches as it was: one step per row."""
    widths = widths[order]
    batches, start, width = [], 0, 0
    for i in range(len(order)):
        new_width = max(width, int(widths[i]))
        if i > start and new_width * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, new_width = i, int(widths[i])
        width = new_width
    if len(order):
        batches.append(order[start:])
    return batches


@pytest.mark.parametrize("seed", range(20))
def test_cutting_in_any_order_is_what_it_was(seed):
    """Rows in any order, not only sorted: the running widest row sets each batch's size."""
    rng = np.random.default_rng(seed)
    widths = rng.integers(1, 80, int(rng.integers(0, 400)))
    order = rng.permutation(len(widths))
    for max_tokens in (1, 50, 79, 300, 5000):
        new, old = cut_batches(order, widths, max_tokens), reference_cut_batches(order, widths, max_tokens)
        assert [b.tolist() for b in new] == [b.tolist() for b in old]


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


def test_the_mapped_store_reads_the_memory_map_without_copying_it(tmp_path):
    """Ids from an Arrow file opened as a memory map stay in it: the store's arrays are views of
    the map, and the process allocates no copy of the ids."""
    rows = [[i % 50 + 4] * (i % 7 + 1) for i in range(5000)]
    path = tmp_path / "ids.arrow"
    table = pa.table({"ids": pa.array(rows, type=pa.list_(pa.int32()))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1000):
            writer.write_batch(batch)
    allocated = pa.total_allocated_bytes()
    column = pa.ipc.open_stream(pa.memory_map(str(path))).read_all().column("ids")
    store = MappedTokenStore(column)
    assert pa.total_allocated_bytes() == allocated  # nothing read into Arrow's own memory
    assert len(store.values) == 5 and not any(values.flags.owndata for values in store.values)
    index = np.array([4999, 0, 2500])
    width = max(len(rows[i]) for i in index)
    assert store.padded(index, pad_id=0).tolist() == [rows[i] + [0] * (width - len(rows[i])) for i in index]


@pytest.mark.parametrize("placement, expected", [("device", DeviceTokenStore), ("mapped", MappedTokenStore)])
def test_token_store_places_ids_as_asked(placement, expected):
    column = pa.array([[5, 3], [6, 6, 3]], type=pa.list_(pa.int32()))
    assert isinstance(token_store(column, torch.device("cpu"), placement), expected)


def test_auto_placement_copies_small_corpora_to_an_accelerator_and_maps_the_rest(monkeypatch):
    import seq2seq.data.token_store

    column = pa.array([[5, 3], [6, 6, 3]], type=pa.list_(pa.int32()))  # 5 ids, 20 bytes
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert resolve_placement(column, gpu) == "device"
    assert resolve_placement(column, cpu) == "mapped"  # a copy in RAM of what the page cache holds
    assert isinstance(token_store(column, cpu), MappedTokenStore)
    for asked in ("device", "mapped"):
        assert resolve_placement(column, cpu, asked) == resolve_placement(column, gpu, asked) == asked
    monkeypatch.setattr(seq2seq.data.token_store, "DEVICE_STORE_MAX_BYTES", 19)
    assert resolve_placement(column, gpu) == "mapped"


def test_every_rank_knows_every_ranks_batches():
    """Rank r's batches are the r-th of the shards every rank computes: so each knows the tokens
    of an update on all ranks, and together they train on what one process accumulating
    world_size batches per update would."""
    lens = np.arange(1, 301) % 29 + 1
    single = EpochBatches(lens, lens, 128, seed=1).epoch(3)
    shards = EpochBatches(lens, lens, 128, seed=1, rank=0, world_size=2).shards(3)
    for rank in range(2):
        assert all((a == b).all() for a, b in zip(
            shards[rank], EpochBatches(lens, lens, 128, seed=1, rank=rank, world_size=2).epoch(3)))
    for k in range(len(shards[0])):
        assert (shards[0][k] == single[2 * k]).all() and (shards[1][k] == single[2 * k + 1]).all()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_mapped_store_lets_go_of_the_pages_it_reads_and_still_reads_them_right(tmp_path):
    """Pages read through the map are released after each batch (MADV_DONTNEED): the process's
    file-backed memory does not grow batch after batch, and rows read again come back intact."""
    rows = [[i % 97 + 4] * (i % 13 + 1) for i in range(200_000)]  # about 5 MB of ids
    path = tmp_path / "ids.arrow"
    table = pa.table({"ids": pa.array(rows, type=pa.list_(pa.int32()))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=10_000):
            writer.write_batch(batch)
    store = MappedTokenStore(pa.ipc.open_stream(pa.memory_map(str(path))).read_all().column("ids"))
    assert len(store.pages.ranges) == 1  # one file, one mapping, one range
    rss_file = lambda: int(re.search(r"RssFile:\s+(\d+)", Path("/proc/self/status").read_text())[1]) * 1024
    before = rss_file()
    rng = np.random.default_rng(0)
    for _ in range(3):  # every row, twice over, the second time after its pages were released
        for index in np.array_split(rng.permutation(len(rows)), 100):
            batch = store.padded(index, pad_id=0)
            assert all(batch[k, :len(rows[i])].tolist() == rows[i] for k, i in enumerate(index[:5].tolist()))
    assert rss_file() - before < 1 << 20  # all 5 MB were read, three times


def test_memory_that_is_not_a_file_mapping_is_never_advised():
    """MADV_DONTNEED would zero anonymous memory: ids held in Arrow's own memory are left alone."""
    rows = [[5, 3], [6, 6, 3]]
    store = MappedTokenStore(pa.array(rows, type=pa.list_(pa.int32())))
    assert store.pages.ranges == []
    assert store.padded(np.array([1, 0]), pad_id=0).tolist() == [[6, 6, 3], [5, 3, 0]]
