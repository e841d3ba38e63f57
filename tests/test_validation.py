from seq2seq.training.validation import EarlyStopping


def test_early_stopping_counts_validations_without_improvement():
    stop = EarlyStopping("bleu", patience=2)
    assert stop.improved({"valid_bleu": 10})
    assert not stop.improved({"valid_bleu": 9})
    assert not stop.should_stop
    assert not stop.improved({"valid_bleu": 10})
    assert stop.should_stop
    loss = EarlyStopping("loss", patience=1)
    assert loss.improved({"valid_loss": 3.0}) and loss.improved({"valid_loss": 2.0})
