import torch

from seq2seq.loss import label_smoothed_loss


def test_loss_matches_torch_cross_entropy():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 5, 11), torch.randint(1, 11, (2, 5))
    target[0, 3:] = 0
    loss, nll = label_smoothed_loss(logits, target, pad_id=0, smoothing=0.1)
    flat = logits.reshape(-1, 11), target.reshape(-1)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(
        *flat, ignore_index=0, label_smoothing=0.1, reduction="sum"))
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(*flat, ignore_index=0, reduction="sum"))
