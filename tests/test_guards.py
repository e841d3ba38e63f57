import numpy as np
import pytest
import torch

from seq2seq.errors import TrainingDiverged
from seq2seq.training.bad_updates import NonFiniteUpdates, OutOfMemorySplits, check_finite_weights

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
    oom = OutOfMemorySplits(src, tgt, max_tokens=1000, max_len=64)
    parts, event = oom.split([np.array([0, 1, 2]), np.array([3])], current_max_tokens=1000, step=7)
    assert [p.tolist() for p in parts] == [[0, 1], [2], [3]]
    assert event == {"event": "oom", "step": 7, "action": "split the update into 3 batches",
                     "max_tokens_from_next_epoch": 750}
    parts, _ = oom.split(parts, current_max_tokens=1000, step=7)
    parts, event = oom.split(parts, current_max_tokens=1000, step=7)  # all single pairs: pair 1 is longest
    assert sorted(int(p[0]) for p in parts) == [0, 2, 3] and "skipped one sentence" in event["action"]
    assert oom.counters() == {"oom_splits": 2, "oom_skipped_sentences": 1}
    assert oom.next_max_tokens == max(64, int(int(int(1000 * 0.75) * 0.75) * 0.75))
