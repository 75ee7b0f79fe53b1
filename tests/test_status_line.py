"""The status-line pointer (router/status_line.py): its ground truth, its training, its file."""

import torch

from modalmesh.router import status_line


def test_the_target_is_the_paragraph_holding_the_message_whatever_ocr_did_to_spacing():
    lines = ["cartly.com", "Home > Account > Payments", "Your card was declined. Try another card", "Order #A-12345"]
    assert status_line.target(lines, "Your card was declined.") == 2
    assert status_line.target(["Yourcard was  declined!", "Your card was declined. Contact us"], "Your card was declined") == 0
    assert status_line.target(lines, "Refund pending") is None
    assert not status_line.holds_message("anything", "")


def _screens(count: int, seed: int) -> list[tuple[torch.Tensor, int]]:
    """Screens of 3-7 paragraph vectors; the message's vector leans along one direction,
    the others are noise: learnable, and not by position (it sits anywhere)."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.tensor([1.0, -1.0] * 8) / 4  # zero mean: not what LayerNorm removes
    pairs = []
    for _ in range(count):
        rows = torch.randn(int(torch.randint(3, 8, (1,), generator=generator)), 16, generator=generator)
        index = int(torch.randint(0, rows.shape[0], (1,), generator=generator))
        rows[index] += 4.0 * direction
        pairs.append((rows, index))
    return pairs


def test_the_pointer_learns_which_paragraph_is_the_message_and_round_trips_through_its_file(tmp_path):
    pointer, summary = status_line.fit(_screens(200, 1), _screens(60, 2), epochs=8)
    assert summary["val_accuracy"] >= 0.9 and summary["train_screens"] == 200
    untrained = status_line.StatusLine(16)
    assert status_line.accuracy(untrained, _screens(60, 2)) < 0.6  # what training adds
    status_line.save(pointer, tmp_path)
    loaded = status_line.load(tmp_path)
    rows = _screens(1, 3)[0][0]
    assert loaded is not None and loaded.pick(rows) == pointer.pick(rows)
    assert status_line.load(tmp_path / "absent") is None and loaded.pick(torch.zeros(0, 16)) is None


def test_a_task_with_a_pointer_reads_only_the_status_message():
    pointer, _ = status_line.fit(_screens(200, 1), [], epochs=8)
    rows, index = _screens(1, 4)[0]
    features = {"text": torch.randn(5, 16), "image_text": rows}
    focused = status_line.focus(pointer, features)
    assert focused["image_text"].shape == (1, 16) and torch.equal(focused["image_text"][0], rows[pointer.pick(rows)])
    assert pointer.pick(rows) == index and focused["text"] is features["text"]
    assert status_line.focus(None, features) is features  # weights without a pointer read every paragraph
    assert status_line.focus(pointer, {"text": features["text"]}) == {"text": features["text"]}
