"""The status-line pointer (router/status_line.py): its ground truth, its training, its file."""

import torch

from modalmesh.router import status_line


def test_the_target_is_the_paragraph_holding_the_message_whatever_ocr_did_to_spacing():
    lines = ["cartly.com", "Home > Account > Payments", "Your card was declined. Try another card", "Order #A-12345"]
    assert status_line.target(lines, "Your card was declined.") == 2
    assert status_line.target(["Yourcard was  declined!", "Your card was declined. Contact us"], "Your card was declined") == 0
    assert status_line.target(lines, "Refund pending") is None
    assert not status_line.holds_message("anything", "")
    assert status_line.is_message("Your card was  declined!", "Your card was declined.")
    assert not status_line.is_message("Your card was declined. Contact us", "Your card was declined.")
    assert not status_line.is_message("", "")


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


def test_the_pointer_is_calibrated_on_validation_and_its_temperature_round_trips(tmp_path):
    # Noisier screens (the message vector leans less): an over-sure pointer is cooled.
    pointer, summary = status_line.fit(_screens(200, 1), _screens(80, 5), epochs=8)
    assert summary["temperature"] == round(float(pointer.log_temperature.exp()), 4) and summary["temperature"] != 1.0

    def nll() -> float:
        with torch.no_grad():
            return sum(float(torch.nn.functional.cross_entropy(pointer(r)[None], torch.tensor([i]))) for r, i in _screens(80, 5))

    fitted = nll()
    with torch.no_grad():
        pointer.log_temperature.zero_()
    assert fitted <= nll() + 1e-6  # the fitted temperature is at least as good on validation as none
    status_line.calibrate(pointer, _screens(80, 5))
    status_line.save(pointer, tmp_path)
    assert float(status_line.load(tmp_path).log_temperature) == float(pointer.log_temperature)


def test_an_answer_averages_over_the_paragraphs_the_pointer_finds_likely():
    from modalmesh.router.fusion import FusionConfig, build_model
    from modalmesh.router.tasks import TASKS, fuse

    spec = TASKS["screenshot_triage"]
    torch.manual_seed(0)
    model = build_model(FusionConfig(labels=spec.labels, input_widths={"text": 16, "image": 8, "image_text": 16, "audio": 8, "audio_text": 16})).eval()
    pointer = status_line.StatusLine(16).eval()
    rows = torch.randn(5, 16)
    features = {"text": torch.randn(3, 16), "image_text": rows}
    read = status_line.readings(pointer, features)
    chances = [c for c, _ in read]
    assert abs(sum(chances) - 1) < 1e-6 and chances == sorted(chances, reverse=True) and len(read) <= status_line.READINGS_MAX
    assert all(f["image_text"].shape == (1, 16) for _, f in read) and torch.equal(read[0][1]["image_text"][0], rows[pointer.pick(rows)])
    mixed = fuse(model, spec, features, {}, attention=False, pointer=pointer).probabilities
    each = [fuse(model, spec, f, {}, attention=False).probabilities for _, f in read]
    assert torch.allclose(mixed, sum(c * p for c, p in zip(chances, each)), atol=1e-5)
    sure = status_line.StatusLine(16).eval()
    sure.load_state_dict(pointer.state_dict())
    with torch.no_grad():
        sure.net[3].weight.mul_(1e4)  # the same ranking, sure of it: that paragraph is read alone
    alone = status_line.readings(sure, features)
    assert len(alone) == 1 and alone[0][0] == 1.0 and torch.equal(alone[0][1]["image_text"][0], rows[pointer.pick(rows)])
    assert status_line.readings(None, features) == [(1.0, features)]


def test_calibration_never_sharpens_the_pointer():
    """Clean screens (the message vector leans far): validation alone would ask for a
    temperature below 1; the pointer keeps its trained sharpness instead, so a layout it
    has not seen is not read with more certainty than training gave it."""
    pointer, _ = status_line.fit(_screens(200, 1), [], epochs=8)
    direction = torch.tensor([1.0, -1.0] * 8) / 4
    clean = [(rows + 6.0 * (torch.arange(rows.shape[0]) == index).float()[:, None] * direction, index) for rows, index in _screens(80, 6)]
    with torch.no_grad():
        pointer.log_temperature.fill_(-1.0)

    def nll(pairs) -> float:
        with torch.no_grad():
            return sum(float(torch.nn.functional.cross_entropy(pointer(r)[None], torch.tensor([i]))) for r, i in pairs)

    sharper = nll(clean)  # a temperature of 1/e fits these screens better than 1 ...
    assert status_line.calibrate(pointer, clean) == 1.0  # ... and is not taken
    assert nll(clean) > sharper


def test_a_pick_unlike_every_training_message_is_flagged_and_the_check_round_trips(tmp_path):
    train, val = _screens(200, 1), _screens(80, 2)
    pointer, summary = status_line.fit(train, val, epochs=8)
    assert pointer.messages.shape == (200, 16) and summary["familiar_from"] == round(float(pointer.familiar_from), 4)
    # FAMILIAR_KEEP of validation's right picks are at least as similar as the threshold.
    right = [rows[index] for rows, index in val if pointer.pick(rows) == index]
    kept = sum(pointer.similarity(row) >= float(pointer.familiar_from) for row in right) / len(right)
    assert status_line.FAMILIAR_KEEP <= kept < 1.0
    message = train[0][0][train[0][1]]
    assert pointer.similarity(message) > 0.999 and status_line.unlike(pointer, train[0][0], train[0][1], "Card declined") == ""
    # A paragraph pointing away from every message (a mail client's folder list, say).
    odd = torch.stack([message, -pointer.messages.float().mean(dim=0)])
    reason = status_line.unlike(pointer, odd, 1, "Inbox 12 Starred Sent Drafts")
    assert "('Inbox 12 Starred Sent Drafts') is unlike every status message" in reason and f"below {float(pointer.familiar_from):.2f}" in reason
    status_line.save(pointer, tmp_path)
    loaded = status_line.load(tmp_path)
    assert torch.equal(loaded.messages, pointer.messages) and float(loaded.familiar_from) == float(pointer.familiar_from)
    assert status_line.unlike(loaded, odd, 1, "Inbox") != ""


def test_a_pick_the_pointer_gives_less_than_even_odds_is_not_stated():
    train, val = _screens(200, 1), _screens(80, 2)
    pointer, _ = status_line.fit(train, val, epochs=8)
    rows, index = train[0]
    assert float(pointer.probabilities(rows)[index]) >= status_line.STATED_FROM and status_line.unstated(pointer, rows, index, "Card declined") == ""
    # The same message three times: each copy a third likely, none more likely than not.
    thrice = torch.stack([rows[index]] * 3)
    reason = status_line.unstated(pointer, thrice, 0, "Card declined")
    assert reason == "no paragraph is more likely than not the status message (the likeliest, 'Card declined', at 0.33)"
    # A pick unlike every training message says that first.
    odd = torch.stack([rows[index], -pointer.messages.float().mean(dim=0)])
    assert status_line.unstated(pointer, odd, 1, "Inbox") == status_line.unlike(pointer, odd, 1, "Inbox") != ""


def test_a_status_message_is_read_surely_where_the_pointer_is_sure_of_a_pick_like_its_training_messages():
    train, val = _screens(200, 1), _screens(80, 2)
    pointer, _ = status_line.fit(train, val, epochs=8)
    rows, index = train[0]
    chance = float(pointer.probabilities(rows)[index])
    assert chance >= status_line.READ_SURELY and status_line.read_surely(pointer, rows) == chance
    assert status_line.read_surely(pointer, torch.stack([rows[index]] * 3)) is None  # a third each: not sure
    odd = -pointer.messages.float().mean(dim=0, keepdim=True)  # alone on its screen, so picked at 1.0, but unlike every message
    assert float(pointer.probabilities(odd)[0]) == 1.0 and status_line.read_surely(pointer, odd) is None
    assert status_line.read_surely(pointer, rows[:0]) is None  # no text
    unchecked, _ = status_line.fit(train, _screens(status_line.FAMILIAR_MIN_PICKS - 1, 2), epochs=8)
    assert not unchecked.checks_familiarity and pointer.checks_familiarity
    assert float(unchecked.probabilities(rows)[index]) >= status_line.READ_SURELY and status_line.read_surely(unchecked, rows) is None


def test_without_enough_right_validation_picks_or_saved_messages_there_is_no_check(tmp_path):
    pointer, summary = status_line.fit(_screens(200, 1), _screens(status_line.FAMILIAR_MIN_PICKS - 1, 2), epochs=8)
    assert summary["familiar_from"] is None and pointer.messages.shape[0] == 200  # messages kept, no threshold to use them with
    far = -pointer.messages.float().mean(dim=0, keepdim=True)
    assert pointer.unfamiliar(far[0]) is None and status_line.unlike(pointer, far, 0, "x") == ""
    # A pointer file written without them (older weights) loads with no check.
    from safetensors.torch import save_file

    state = {k: v for k, v in pointer.state_dict().items() if k not in ("messages", "familiar_from")}
    save_file(state, str(tmp_path / status_line.FILE_NAME))
    loaded = status_line.load(tmp_path)
    assert loaded.messages.shape == (0, 16) and loaded.similarity(far[0]) is None and status_line.unlike(loaded, far, 0, "x") == ""
