"""Screen text layout: OCR boxes into reading order and paragraphs (common/layout.py)."""

from modalmesh.common.layout import paragraphs, reading_order


def test_rows_are_read_top_to_bottom_then_left_to_right():
    spans = [("world", (60, 12, 110, 30)), ("below", (0, 80, 50, 98)), ("hello", (0, 10, 50, 30))]
    assert [[t for t, _ in row] for row in reading_order(spans)] == [["hello", "world"], ["below"]]


def test_wrapped_lines_join_and_separate_blocks_stay_apart():
    spans = [
        ("ShopFast", (10, 8, 120, 32)),  # title bar, larger type
        ("Sale: 20% off today", (16, 64, 200, 80)),  # menu line, smaller type
        ("Card ending 4242 was", (40, 300, 300, 320)),  # a dialog's message, wrapped
        ("flagged as suspicious", (40, 326, 290, 346)),
        ("OK", (330, 420, 360, 438)),  # far below: its own block
    ]
    assert paragraphs(spans) == ["ShopFast", "Sale: 20% off today", "Card ending 4242 was flagged as suspicious", "OK"]


def test_a_paragraph_break_holds_whether_the_boxes_are_drawn_tight_or_loose():
    """An e-mail on a 390x844 phone screen, its boxes as PP-OCR drew them detecting at the
    image's own size (loose: the first line 27 px tall) and at the engine's upscaled size
    (tight: 22 px): a 13-16 px gap between two paragraphs of 22-px type. Judged against
    the smaller line, both readings break there; the wrapped sentence below stays whole."""
    loose = [
        ("Your password was changed.", (12, 165, 213, 192)),
        ("You can manage your emails in your", (12, 205, 267, 228)),
        ("account settings.", (11, 230, 131, 254)),
    ]
    tight = [
        ("Your password was changed.", (13, 168, 213, 190)),
        ("You can manage your emails in your", (13, 206, 268, 228)),
        ("account settings.", (13, 231, 130, 252)),
    ]
    expected = ["Your password was changed.", "You can manage your emails in your account settings."]
    assert paragraphs(loose) == paragraphs(tight) == expected


def test_words_on_one_row_join_unless_far_apart_and_spans_without_boxes_are_kept():
    spans = [("Invalid", (0, 0, 60, 20)), ("password", (70, 2, 150, 20)), ("Help", (600, 0, 640, 20)), ("no box", ())]
    assert paragraphs(spans) == ["Invalid password", "Help", "no box"]


def test_blank_text_is_whitespace_control_and_format_characters_only():
    from modalmesh.common.layout import is_blank

    assert is_blank("") and is_blank(" \n\t") and is_blank("\u200b\ufeff\u200e\x00")
    assert not is_blank("\u200bok") and not is_blank("💳") and not is_blank("?")


def test_a_line_that_ends_short_of_the_next_word_is_a_hard_break():
    """A delivery timeline (boxes as PP-OCR gave them on a browser-drawn page): three lines
    close together, in one font, but the first two end where the next line's first word
    would have fitted, so they were broken on purpose; a wrapped sentence stays whole."""
    timeline = [
        ("Order placed 22 Jul", (148, 154, 302, 180)),
        ("Packed 22 Jul", (148, 187, 259, 213)),
        ("We could not take payment for this order", (148, 220, 509, 248)),
    ]
    assert paragraphs(timeline) == ["Order placed 22 Jul", "Packed 22 Jul", "We could not take payment for this order"]
    wrapped = [("Your refund of $49.99 could not be sent to", (40, 300, 420, 322)), ("your bank", (40, 328, 130, 350))]
    assert paragraphs(wrapped) == ["Your refund of $49.99 could not be sent to your bank"]
    centred = [("Your card was declined by", (120, 300, 380, 322)), ("the bank", (205, 328, 295, 350))]
    assert paragraphs(centred) == ["Your card was declined by the bank"]


def test_a_smaller_line_directly_under_a_message_is_a_paragraph_of_its_own():
    """Boxes as PP-OCR drew them at the quick detection size (a 1024x614 screen drawn in
    DejaVu Sans): a 17-px message with a 13-px line 5 px under it, and a 17-px message
    wrapped over two lines. The padded boxes are nearly as tall (22 against 27 px), so
    heights alone joined the small line to the message; type sizes, read off the boxes'
    widths, tell them apart, and the wrapped message stays whole."""
    from modalmesh.common.layout import _Line, type_size

    helper = [("We could not verify the security code yo", (54.0, 176.0, 405.0, 203.0)), ("Privacy Terms Cookies", (57.0, 199.0, 210.0, 221.0))]
    assert paragraphs(helper) == ["We could not verify the security code yo", "Privacy Terms Cookies"]
    wrapped = [("We could not verify the security code", (54.0, 177.0, 318.0, 203.0)), ("you entered for this account", (55.0, 201.0, 254.0, 223.0))]
    assert paragraphs(wrapped) == ["We could not verify the security code you entered for this account"]
    message, small = (_Line(text, box) for text, box in helper)
    assert 0.7 < type_size(small) / type_size(message) < 0.8
    # Short lines are not compared by type size: a wrapped message's last word stays with it.
    last_word = [("Your refund will take 5-10 business", (40, 300, 330, 320)), ("days.", (40, 326, 90, 346))]
    assert paragraphs(last_word) == ["Your refund will take 5-10 business days."]


def test_a_wrapped_last_word_in_a_taller_box_stays_with_its_message():
    """Boxes as PP-OCR drew them at the quick detection size on a 390x760 phone screen: the
    message's first line in a tight 21-px box, its last word in a 29-px one (0.72 of it),
    the full size's boxes 26 and 25 px. One paragraph either way; a button below stays apart."""
    quick = [("Your new card arrived", (37.0, 329.0, 234.0, 350.0)), ("safely", (33.0, 347.0, 95.0, 376.0)), ("OK", (305.0, 388.0, 346.0, 416.0))]
    full = [("Your new card arrived", (35.0, 325.0, 235.0, 351.0)), ("safely", (36.0, 350.0, 93.0, 375.0)), ("OK", (306.0, 390.0, 344.0, 415.0))]
    assert paragraphs(quick) == paragraphs(full) == ["Your new card arrived safely", "OK"]
    # A short line in type well under the message's (a 15-px box under a 29-px one) stays apart.
    smaller = [("Your new card arrived", (37.0, 322.0, 300.0, 351.0)), ("Help", (37.0, 352.0, 70.0, 367.0))]
    assert paragraphs(smaller) == ["Your new card arrived", "Help"]
