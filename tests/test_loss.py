import pytest
import torch

from seq2seq.training import loss as loss_module
from seq2seq.training.loss import label_smoothed_loss


def test_loss_matches_torch_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 11), torch.randint(1, 11, (2, 5))
    target[0, 3:] = 0
    loss, nll = label_smoothed_loss(logits, target, pad_id=0, smoothing=0.1)
    flat = logits.reshape(-1, 11), target.reshape(-1)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(
        *flat, ignore_index=0, label_smoothing=0.1, reduction="sum"))
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(*flat, ignore_index=0, reduction="sum"))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("block", [1 << 21, 7 * 11])  # one block, and blocks of 7 rows
def test_the_fused_projection_loss_equals_the_plain_one_with_its_gradients(monkeypatch, smoothing, block):
    monkeypatch.setattr(loss_module, "LOSS_BLOCK_ELEMENTS", block)
    torch.manual_seed(0)
    states = torch.randn(3, 6, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    target = torch.randint(1, 11, (3, 6))
    target[1, 4:] = 0
    target[2, 1:] = 0
    loss, nll = loss_module.label_smoothed_loss(states @ weight.t(), target, pad_id=0, smoothing=smoothing)
    fused, fused_nll = loss_module.projected_smoothed_loss(states, weight, target, pad_id=0, smoothing=smoothing)
    torch.testing.assert_close(fused.double(), loss.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_nll.double(), nll.double(), rtol=1e-5, atol=1e-5)
    expected = torch.autograd.grad(loss * 0.37, (states, weight))
    got = torch.autograd.grad(fused * 0.37, (states, weight))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-5)


def test_the_fused_gradient_passes_gradcheck():
    torch.manual_seed(1)
    states = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 7, (5,))
    assert torch.autograd.gradcheck(
        lambda s, w: loss_module._ProjectedSmoothedLoss.apply(s, w, target, 0.1, torch.float32)[0], (states, weight))


def test_under_bf16_autocast_the_fused_loss_multiplies_in_bf16_and_stays_close():
    """Its three matrix products in bf16, its log-sum-exp and loss in float32: close to float32's."""
    torch.manual_seed(0)
    states = torch.randn(4, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    target = torch.randint(1, 50, (4, 9))
    target[3, 5:] = 0
    exact = loss_module.projected_smoothed_loss(states, weight, target, pad_id=0, smoothing=0.1)[0]
    exact_grads = torch.autograd.grad(exact, (states, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss_module.projected_smoothed_loss(states, weight, target, pad_id=0, smoothing=0.1)[0]
    assert low.dtype == torch.float32 and low.item() != exact.item()  # bf16 products round differently
    torch.testing.assert_close(low, exact, rtol=1e-2, atol=0)
    for got, want in zip(torch.autograd.grad(low, (states, weight)), exact_grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0.05 * want.abs().max().item())
