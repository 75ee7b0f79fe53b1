"""The compute-routing policy (router/routing.py): the functions the router's gather loop
and the offline simulation both decide through."""

from __future__ import annotations

import inspect

from modalmesh.router import pipeline, routing
from modalmesh.router.routing import answer_now, outstanding, sure_enough, waits_for_required


def test_what_is_outstanding_counts_side_outputs_coming_and_still_to_ask_for():
    # The image call brings its OCR with it; the transcript is asked for once the base features are in.
    assert outstanding(["image", "text"], {"image"}, ["audio"]) == ["image", "text", "image_text", "audio_text"]
    assert outstanding([], {"image"}, []) == []
    assert outstanding(["image_text"], {"image"}, []) == ["image_text"]  # a side output asked for later is its own call


def test_an_answer_waits_for_what_the_task_or_the_caller_requires():
    assert waits_for_required(["image_text"], {"image"})  # the scan's side output is the scan's modality
    assert not waits_for_required(["audio", "audio_text"], {"image"})
    assert not waits_for_required([], {"image"})


def test_an_early_answer_needs_both_confidence_and_little_outstanding_weight():
    assert sure_enough(0.97, 0.1, tau=0.95, gamma=0.2)
    assert not sure_enough(0.94, 0.1, tau=0.95, gamma=0.2)  # not confident enough
    assert not sure_enough(0.99, 0.3, tau=0.95, gamma=0.2)  # what is missing could change it
    reason = answer_now(0.97, 0.1, 0.95, 0.2)
    assert reason.startswith("confidence 0.97 >= tau 0.95") and "< gamma 0.2" in reason
    assert answer_now(0.5, 0.1, 0.95, 0.2) == ""


def test_serving_and_the_simulation_decide_through_the_same_policy():
    gather = inspect.getsource(pipeline.Pipeline.gather)
    simulated = inspect.getsource(routing.routing_cases) + inspect.getsource(routing.route) + inspect.getsource(routing.early_answer)
    for function in ("outstanding(", "waits_for_required(", "answer_now(", "self.withheld("):
        assert function in gather, function
    for function in ("outstanding(", "waits_for_required(", "sure_enough(", "serve(", "c.served", "quick_reading_holds("):
        assert function in simulated, function
    assert "quick_reading_holds(" in inspect.getsource(pipeline.Pipeline.judge_quick_reading)


def test_a_quick_reading_holds_only_for_an_answer_given_with_a_familiar_status_message():
    import torch

    from modalmesh.router.routing import QUICK_SURE_STATUS, quick_reading_holds
    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, load_task
    from modalmesh.text.model import TextEncoder

    pointer = load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS)).status_line
    screen = ["ShopFast", "Home Orders Account Help", "Your card was declined. Try another card", "OK"]
    rows = torch.stack([torch.as_tensor(r.pooled, dtype=torch.float32) for r in TextEncoder("").encode_batch(screen)])
    folders = torch.as_tensor(TextEncoder("").encode_batch(["Inbox 12 Starred Sent Drafts 2 Promotions Spam"])[0].pooled, dtype=torch.float32)[None]
    assert float(pointer.probabilities(rows).max()) >= QUICK_SURE_STATUS
    assert quick_reading_holds(True, pointer, rows)
    # An answer that would be withheld holds only where the pointer is sure of the status message it read.
    assert quick_reading_holds(False, pointer, rows)
    two = TextEncoder("").encode_batch(["Your card was declined", "Incorrect password"])
    vague = torch.stack([torch.as_tensor(r.pooled, dtype=torch.float32) for r in two])
    assert float(pointer.probabilities(vague).max()) < QUICK_SURE_STATUS
    assert not quick_reading_holds(False, pointer, vague) and quick_reading_holds(True, pointer, vague)  # two messages: which one is not sure
    assert not quick_reading_holds(True, pointer, rows[:0])  # no text found: the full size may find some
    assert not quick_reading_holds(True, pointer, None)
    assert not quick_reading_holds(True, pointer, folders)  # its status message unlike every training one
    assert quick_reading_holds(True, None, folders) and not quick_reading_holds(False, None, folders)  # no pointer: the answer decides


def test_under_load_an_eager_side_output_is_started_only_while_it_is_usually_used():
    """Speculation: alone, the router always starts an eager side output with its base
    features; with other calls in hand, only while recent answers used it."""
    from modalmesh.router.routing import EAGER_MIN_SHARE, SPECULATION_MIN_SEEN, SPECULATION_WINDOW, Speculation

    speculation = Speculation()
    for _ in range(SPECULATION_WINDOW):
        speculation.record("triage", "audio", False)  # the transcript was never in the answer
    with speculation.call():
        assert speculation.eager("triage", "audio")  # alone: the cores are free
        with speculation.call():  # another call in hand
            assert not speculation.eager("triage", "audio")
            assert speculation.eager("triage", "image")  # nothing known of it yet
            assert speculation.eager("other task", "audio")
            for index in range(SPECULATION_WINDOW):  # answers need it again: back to eager once they mostly do
                speculation.record("triage", "audio", True)
                if speculation.eager("triage", "audio"):
                    break
            assert index + 1 == round(EAGER_MIN_SHARE * SPECULATION_WINDOW)
    assert speculation.in_hand == 0
    fresh = Speculation()
    for _ in range(SPECULATION_MIN_SEEN - 1):
        fresh.record("triage", "audio", False)
    with fresh.call(), fresh.call():
        assert fresh.eager("triage", "audio")  # too few requests seen to judge
        fresh.record("triage", "audio", False)
        assert not fresh.eager("triage", "audio")
