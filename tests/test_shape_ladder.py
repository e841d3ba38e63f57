"""The shape ladder (seq2seq.data.shape_ladder), and what a GPU step is built of that a CPU can check: batches
cut and padded on the ladder, a fixed-shape loss, the warm-up's bookkeeping, the next batch gathered ahead,
and padded decoding."""

import gzip
import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch
from helpers import MULTI30K, assert_resumes_exactly, tiny_model_config, tiny_train_config, write_slice
from rich.console import Console
from typer.testing import CliRunner

from cli.info import render
from cli.main import app

from seq2seq.config import DecodeConfig
from seq2seq.data.batching import EpochBatches, collate, token_batches
from seq2seq.data.shape_ladder import ROW_STEP, ShapeLadder, count_shapes, shape_ladder
from seq2seq.data.token_store import DeviceTokenStore, MappedTokenStore
from seq2seq.inspection.metrics_records import check_record
from seq2seq.training import loss as loss_module
from seq2seq.training import validation as validation_module
from seq2seq.training.loss import uses_cuda_graphs
from seq2seq.training.run import make_trainer, train

CPU = torch.device("cpu")
LONGEST = [1, 3, 17, 64, 100, 256, 1000]


@pytest.mark.parametrize("longest", LONGEST)
def test_every_length_goes_up_to_a_rung_at_most_a_quarter_above_it(longest):
    ladder = ShapeLadder(longest)
    rungs = ladder.lengths
    assert (np.diff(rungs) > 0).all() and rungs[-1] == longest
    assert len(rungs) <= 4 * longest.bit_length()  # four a doubling
    lengths = np.arange(1, longest + 1)
    padded = ladder.rungs(lengths)
    assert np.isin(padded, rungs).all()
    assert (padded >= lengths).all() and (padded - lengths <= np.maximum(1, lengths // 4)).all()
    assert (np.diff(padded) >= 0).all()  # a longer row never gets a shorter rung
    assert ladder.rung(longest + 5) == longest + 5  # nothing above the top is cut


@pytest.mark.parametrize("longest", LONGEST)
@pytest.mark.parametrize("max_tokens", [1, 7, 600, 4096, 65536])
def test_rows_are_a_rungs_capacity_or_a_multiple_of_eight(longest, max_tokens):
    ladder = ShapeLadder(longest)
    counts = ladder.row_counts(max_tokens)
    assert counts[0] == 1 and (np.diff(counts) > 0).all()
    capacities = np.maximum(max_tokens // ladder.lengths, 1)
    assert np.isin(capacities, counts).all()
    assert all(count in capacities or count % ROW_STEP == 0 or count in (1, 2, 4) for count in counts)


def random_pairs(seed: int, n: int = 600, longest: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, longest + 1, n), rng.integers(1, longest + 1, n)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("max_tokens", [80, 600, 2500, 20000])
def test_batches_on_the_ladder_keep_the_budget_and_every_pair_once(seed, max_tokens):
    src, tgt = random_pairs(seed)
    ladder = ShapeLadder(80)
    batches = token_batches(src, tgt, max_tokens, np.random.default_rng(seed), ladder)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(src)))
    counts = ladder.row_counts(max_tokens)
    for index in batches:
        width = max(ladder.rung(int(src[index].max())), ladder.rung(int(tgt[index].max())))
        assert len(index) * width <= max_tokens or len(index) == 1
        assert len(index) in counts


def test_the_ladder_bounds_the_shapes_of_the_bundled_corpus_with_little_extra_padding():
    """Over the bundled Multi30k train set (words + EOS stand in for pieces here; bench/shape_count.py measures
    an 8k tokenizer's) at small and GPU-sized budgets: at most 64 shapes an epoch, and the ladder adds at most
    10% of the real tokens in padding to what batches pad without it."""
    def lengths(lang):
        with gzip.open(MULTI30K / f"train.{lang}.gz", "rt", encoding="utf-8") as lines:
            return np.array([len(line.split()) + 1 for line in lines])

    src, tgt = lengths("en"), lengths("de")
    ladder = ShapeLadder(256)
    for max_tokens in (2500, 4096, 16384, 65536):
        on = count_shapes(token_batches(src, tgt, max_tokens, np.random.default_rng(1), ladder), src, tgt, ladder)
        off = count_shapes(token_batches(src, tgt, max_tokens, np.random.default_rng(1)), src, tgt, None)
        assert on.shapes <= 64 and on.shapes < off.shapes or off.shapes <= 10, max_tokens
        assert on.padding - off.padding <= 0.10, max_tokens


def test_an_epoch_on_the_ladder_is_a_function_of_seed_and_epoch_with_the_same_shapes_each_time():
    src, tgt = random_pairs(3, 2000)
    make = lambda: EpochBatches(src, tgt, 1200, seed=5, ladder=ShapeLadder(80))
    a, b = make(), make()
    assert all((x == y).all() for x, y in zip(a.epoch(2), b.epoch(2)))
    assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a.epoch(1), a.epoch(2)))
    # Shuffling only swaps pairs of one rung: every epoch has the same shapes.
    assert a.shape_count(1).examples.keys() == a.shape_count(2).examples.keys()
    assert len(a.epoch(1)) == len(a.epoch(2)) == len(a)


@pytest.mark.parametrize("store_class", [DeviceTokenStore, MappedTokenStore])
def test_collate_pads_each_side_to_its_rung(store_class):
    rng = np.random.default_rng(0)
    rows = [rng.integers(4, 50, size=rng.integers(1, 30)).tolist() for _ in range(40)]
    store = store_class(pa.array(rows, type=pa.list_(pa.int32())))
    index = rng.permutation(40)[:9]
    ladder = ShapeLadder(64)
    batch = collate(store, store, index, pad_id=0, bos_id=2, ladder=ladder)
    width = ladder.rung(max(len(rows[i]) for i in index))
    assert batch.src.shape == batch.tgt_out.shape == batch.tgt_in.shape == (9, width)
    assert batch.src.tolist() == [rows[i] + [0] * (width - len(rows[i])) for i in index]
    assert batch.tgt_in.tolist() == [[2] + rows[i][:-1] + [0] * (width - len(rows[i])) for i in index]
    with pytest.raises(ValueError, match="shorter than the longest row"):
        store.padded(index, 0, width=1)


@pytest.mark.parametrize("setting, device, on", [("auto", "cpu", False), ("auto", "cuda", True), ("auto", "mps", False),
                                                 ("on", "cpu", True), ("off", "cuda", False)])
def test_the_ladder_is_on_for_cuda_unless_asked_otherwise(setting, device, on):
    ladder = shape_ladder(setting, torch.device(device), 100)
    assert (ladder is not None) == on and (ladder is None or ladder.lengths[-1] == 100)


# ---------------------------------------------------------------------------
# Training on the ladder.

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return write_slice(folder, "train", 200, "train"), write_slice(folder, "val", 30, "val")


def test_a_run_on_the_ladder_trains_on_its_shapes_and_says_how_many(corpus, tmp_path, monkeypatch):
    seen = []
    real_collate = loss_module.collate

    def spy(*args, **kwargs):
        batch = real_collate(*args, **kwargs)
        seen.append((tuple(batch.src.shape), tuple(batch.tgt_out.shape)))
        return batch

    monkeypatch.setattr(loss_module, "collate", spy)
    events = []
    cfg = tiny_train_config(corpus[0], "", epochs=2, shape_ladder="on")
    train(tmp_path / "run", tiny_model_config(), cfg, CPU, on_event=events.append)
    ladder = ShapeLadder(cfg.max_len)
    assert seen and all(src[1] in ladder.lengths and tgt[1] in ladder.lengths and src[0] == tgt[0]
                        for src, tgt in seen)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    shapes = [r for r in records if r["event"] == "batch_shapes"]
    assert [r["epoch"] for r in shapes] == [1, 2] and all(check_record(r) for r in shapes)
    assert shapes[0]["shape_ladder"] is True and "warmup_seconds" not in shapes[0]  # no CUDA graphs to warm
    assert shapes[0]["shapes"] == len(set(seen[:shapes[0]["batches"]])) <= shapes[0]["batches"]
    assert any(e["event"] == "batch_shapes" for e in events)
    # `s2s info` reports the last epoch's count, in its JSON and on its panel.
    result = CliRunner().invoke(app, ["info", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    last = {key: shapes[-1].get(key) for key in ("epoch", "batches", "shapes", "padding", "shape_ladder",
                                                 "warmup_seconds")}
    info = json.loads(result.stdout)
    assert info["training"]["batch_shapes"] == last and last["epoch"] == 2
    console = Console(width=300, record=True)
    console.print(render(info))
    panel = console.export_text()
    assert f"{last['shapes']} shapes in {last['batches']} batches an epoch" in panel
    assert f"{100 * last['padding']:.1f}% over the real tokens; shape ladder on" in panel


def test_resume_on_the_ladder_is_exact(corpus, tmp_path):
    cfg = tiny_train_config(corpus[0], corpus[1], epochs=0, log_every=1, shape_ladder="on")
    assert_resumes_exactly(cfg, tmp_path, stop=5, end=8)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("block", [1 << 21, 5 * 11])
def test_the_fixed_shape_loss_masks_what_the_other_drops(monkeypatch, smoothing, block):
    """On CUDA the padding rows are projected and masked, not dropped (dropping needs their count on the
    host): the same loss and gradients, and a padding row's state, even NaN, changes nothing."""
    monkeypatch.setattr(loss_module, "GPU_LOSS_BLOCK_ELEMENTS", block)
    torch.manual_seed(0)
    states = torch.randn(3, 6, 8, dtype=torch.float64)
    weight = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 11, (3, 6))
    target[1, 4:] = 0
    target[2, 1:] = 0
    dropped_states = states.clone().requires_grad_()
    masked_states = states.clone()
    masked_states[2, 3] = float("nan")  # a padding position
    masked_states.requires_grad_()
    dropped = loss_module.projected_smoothed_loss(dropped_states, weight, target, 0, smoothing, fixed_shape=False)
    masked = loss_module.projected_smoothed_loss(masked_states, weight, target, 0, smoothing, fixed_shape=True)
    for a, b in zip(masked, dropped):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-6, atol=1e-6)
    grads_dropped = torch.autograd.grad(dropped[0], (dropped_states, weight))
    grads_masked = torch.autograd.grad(masked[0], (masked_states, weight))
    for a, b in zip(grads_masked, grads_dropped):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-6, atol=1e-6)
    assert (grads_masked[0][target.eq(0)] == 0).all()


def test_the_loss_keeps_its_fixed_shape_on_cuda_only(monkeypatch):
    seen = []
    real_apply = loss_module._ProjectedSmoothedLoss.apply

    def spy(states, weight, target, *rest):
        seen.append((states.shape[0], len(rest)))
        return real_apply(states, weight, target, *rest)

    monkeypatch.setattr(loss_module._ProjectedSmoothedLoss, "apply", spy)
    states, weight = torch.randn(2, 5, 4), torch.randn(9, 4)
    target = torch.tensor([[3, 4, 0, 0, 0], [5, 6, 7, 0, 0]])
    loss_module.projected_smoothed_loss(states, weight, target, 0, 0.1)
    assert seen == [(5, 2)]  # the CPU drops the 5 padding rows, as it always did


def test_the_step_is_captured_as_cuda_graphs_on_one_gpu_only():
    assert uses_cuda_graphs(torch.device("cuda"), 1)
    assert not uses_cuda_graphs(torch.device("cuda"), 2)  # DDP's all-reduce hooks run inside the backward
    assert not uses_cuda_graphs(CPU, 1)


def test_warm_up_runs_each_new_shape_and_leaves_weights_gradients_and_random_state_alone(corpus, tmp_path):
    """The CUDA-graph warm-up's bookkeeping, run eagerly on the CPU: one forward and backward per new
    shape and pass, nothing changed that training reads, and a shape warmed up once is not warmed again."""
    cfg = tiny_train_config(corpus[0], "", shape_ladder="on")
    trainer = make_trainer(tmp_path / "run", tiny_model_config(), cfg, CPU)
    gradients = trainer.gradients
    assert gradients.warm_up(trainer.batches.shape_count(1).examples) is None  # no CUDA graphs on the CPU
    gradients.cuda_graphs = True
    calls = []
    eager = gradients.forward_loss
    gradients.forward_loss = lambda *batch: calls.append(tuple(batch[0].shape)) or eager(*batch)
    weights = {key: value.clone() for key, value in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    examples = trainer.batches.shape_count(1).examples
    assert gradients.warm_up(examples) >= 0
    assert len(calls) == 2 * len(examples) and len(set(calls)) == len({(s[0], s[1]) for s in examples})
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(weights[key], value) for key, value in trainer.model.state_dict().items())
    assert all(p.grad is None for p in trainer.model.parameters())
    calls.clear()
    gradients.warm_up(examples)
    assert calls == []


def test_the_next_batch_is_gathered_during_the_update_on_cuda_only(corpus, tmp_path):
    trainer = make_trainer(tmp_path / "run", tiny_model_config(), tiny_train_config(corpus[0], ""), CPU)
    gradients, batches = trainer.gradients, trainer.batches.epoch(1)
    gradients.expect(batches[1])
    assert gradients.upcoming is None  # the CPU gathers each batch when its update starts, as it did
    gradients.upcoming = batches[1]  # what expect() keeps on CUDA
    gradients.accumulate([batches[0]])
    assert gradients.gathered is not None and gradients.gathered[0] is batches[1] and gradients.upcoming is None
    ahead = gradients.gathered[1]
    assert gradients.collate_batch(batches[1]) is ahead and gradients.gathered is None
    assert gradients.collate_batch(batches[1]) is not ahead  # used once


# ---------------------------------------------------------------------------
# Decoding on the ladder.

@pytest.mark.parametrize("decode", [DecodeConfig(beam=1, max_tokens=40), DecodeConfig(beam=3, max_tokens=40)])
def test_decoding_on_the_ladder_pads_sources_to_rungs_and_finds_the_same_outputs(monkeypatch, decode):
    from seq2seq.model.transformer import build_model
    from seq2seq.search import decode as decode_module

    cfg = replace(tiny_model_config(), src_vocab_size=40, tgt_vocab_size=40, dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    rng = np.random.default_rng(0)
    rows = [rng.integers(4, 40, size=rng.integers(1, 20)).tolist() + [cfg.eos_id] for _ in range(23)]
    widths = []
    real_search = decode_module._search_batch
    monkeypatch.setattr(decode_module, "_search_batch",
                        lambda model, src, *rest: widths.append(src.shape[1]) or real_search(model, src, *rest))
    off = decode_module.nbest_ids(model, rows, decode, ladder="off")
    widths.clear()
    on = decode_module.nbest_ids(model, rows, decode, ladder="on")
    assert set(widths) <= set(ShapeLadder(cfg.max_positions).lengths.tolist())
    assert [[h.tokens for h in found] for found in on] == [[h.tokens for h in found] for found in off]
    assert [found[0].score for found in on] == pytest.approx([found[0].score for found in off], abs=1e-4)


def test_validation_loss_on_the_ladder_pads_as_training_does_and_scores_the_same(corpus, tmp_path, monkeypatch):
    """On a GPU the validation loss's batches take training's shapes; padding never changes the loss."""
    cfg = tiny_train_config(corpus[0], corpus[1], shape_ladder="on", valid_beam=1, valid_bleu_sentences=4)
    trainer = make_trainer(tmp_path / "run", tiny_model_config(), cfg, CPU)
    widths = []
    real_collate = validation_module.collate

    def spy(*args, **kwargs):
        batch = real_collate(*args, **kwargs)
        widths.append((batch.src.shape[1], batch.tgt_in.shape[1]))
        return batch

    monkeypatch.setattr(validation_module, "collate", spy)
    on = trainer.validation.measure(trainer.model)
    ladder = ShapeLadder(cfg.max_len)
    assert widths and all(ladder.rung(width) == width for pair in widths for width in pair)
    trainer.validation.cfg = replace(cfg, shape_ladder="off")
    widths.clear()
    off = trainer.validation.measure(trainer.model)
    assert any(ladder.rung(width) != width for pair in widths for width in pair)  # the ladder did pad
    assert on["valid_loss"] == pytest.approx(off["valid_loss"], rel=1e-5) and on["valid_bleu"] == off["valid_bleu"]
