import numpy as np
import pytest
import torch

from seq2seq.errors import TrainingDiverged
from seq2seq.training.bad_updates import NonFiniteUpdates, OutOfMemorySplits, check_finite_weights
from seq2seq.training.batches import TrainingBatches

CPU = torch.device("cpu")


def test_non_finite_updates_are_reported_once_and_stop_after_too_many_in_a_row(tmp_path):
    counts = NonFiniteUpdates(CPU, max_in_a_row=3)
    events = []
    for bad in (True, True, False, True):
        counts.record(torch.tensor(bad))
    counts.check(4, tmp_path, events.append)
    counts.check(5, tmp_path, events.append)  # nothing new since the last check
    assert [(e["step"], e["skipped"], e["in_a_row"]) for e in events] == [(4, 3, 1)]
    assert counts.state() == {"skipped_updates": 3, "bad_in_a_row": 1}
    for _ in range(2):
        counts.record(torch.tensor(True))
    with pytest.raises(TrainingDiverged, match="not finite for 3 updates in a row by step 7"):
        counts.check(7, tmp_path, events.append)


def test_non_finite_weights_are_refused(tmp_path):
    layer = torch.nn.Linear(2, 2)
    check_finite_weights(layer, 1, tmp_path)
    with torch.no_grad():
        layer.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match="weights became non-finite by step 2.*no checkpoint"):
        check_finite_weights(layer, 2, tmp_path)


def test_out_of_memory_halves_batches_then_drops_the_longest_sentence():
    src, tgt = np.array([3, 9, 4, 5]), np.array([3, 9, 4, 5])
    batches = TrainingBatches(src, tgt, max_tokens=1000, seed=0)
    oom = OutOfMemorySplits(batches, max_len=64)
    parts, event = oom.split([np.array([0, 1, 2]), np.array([3])], step=7)
    assert [p.tolist() for p in parts] == [[0, 1], [2], [3]]
    assert event == {"event": "oom", "step": 7, "action": "split the update into 3 batches",
                     "max_tokens_from_next_epoch": 750}
    parts, _ = oom.split(parts, step=7)
    parts, event = oom.split(parts, step=7)  # all single pairs: pair 1 is longest
    assert sorted(int(p[0]) for p in parts) == [0, 2, 3] and "skipped one sentence" in event["action"]
    assert oom.counters() == {"oom_splits": 2, "oom_skipped_sentences": 1}
    # The batches' budget is the one the policy shrank, and never below one pair of max_len.
    assert batches.next_max_tokens == event["max_tokens_from_next_epoch"] == int(int(750 * 0.75) * 0.75)
    for _ in range(20):
        oom.split([np.array([0, 1])], step=8)
    assert batches.next_max_tokens == 64


def test_a_shrunk_budget_cuts_the_next_epoch_not_this_one():
    """This epoch's batches stay as they were cut (a resumed run counts its position in them); the
    next epoch is cut to the shrunk budget, and a saved budget comes back whole."""
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 30, 200), rng.integers(1, 30, 200)
    batches = TrainingBatches(src, tgt, max_tokens=300, seed=1)
    first = batches.epoch(1)
    batches.shrink_from_next_epoch(150)
    assert batches.max_tokens == 300 and [b.tolist() for b in batches.epoch(1)] == [b.tolist() for b in first]
    batches.start_next_epoch()
    assert batches.max_tokens == 150 and len(batches) > len(first)
    assert all(len(b) * np.maximum(src, tgt)[b].max() <= 150 for b in batches.epoch(2))
    saved = {**batches.budget(), "step": 9}
    batches.shrink_from_next_epoch(100)
    resumed = TrainingBatches(src, tgt, max_tokens=300, seed=1)
    resumed.restore_budget(saved)
    assert resumed.budget() == {"max_tokens": 150, "next_max_tokens": 150}
    assert [b.tolist() for b in resumed.epoch(2)] == [b.tolist() for b in batches.epoch(2)]


def test_update_tokens_count_every_ranks_batches():
    """Each rank counts the target tokens of the whole update (every rank's part) without asking."""
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 30, 200), rng.integers(1, 30, 200)
    ranks = [TrainingBatches(src, tgt, 300, seed=1, rank=rank, world_size=2) for rank in range(2)]
    own = [sum(int(tgt[index].sum()) for index in r.epoch(3)[4:6]) for r in ranks]
    assert ranks[0].update_tokens(3, 4, 2) == ranks[1].update_tokens(3, 4, 2) == sum(own)
