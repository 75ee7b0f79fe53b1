"""An answer claims only what was read: inputs a task cannot read are NOT_APPLICABLE with a
reason, findings come from measurement, and an unsure answer is withheld.

The mesh tests send real files nobody here made (pydicom's head CTs, MR and chest crop,
scikit-image's photos) to a real router on 127.0.0.1 with the shipped weights.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from PIL import Image, ImageDraw

from modalmesh.common.client import connect
from modalmesh.router import applicability
from modalmesh.router.fusion import FusionConfig
from modalmesh.router.tasks import TASKS, neighbours_disagree, withheld
from modalmesh.router.train import (
    Example,
    beyond_risk,
    choose_abstain_below,
    choose_alone_thresholds,
    lowest_safe_threshold,
    neighbour_precision,
    neighbours_kept,
)
from modalmesh.v1 import router_pb2, router_pb2_grpc
from tests.media import ct_dicom, image_bytes, phantom_hu, render_screenshot, wav_bytes

STATUS = router_pb2.ModalityStatus.Name
MEDICAL, TRIAGE = TASKS["medical_report"], TASKS["screenshot_triage"]


# ------------------------------------------------------------------ the policy, alone


def test_the_ct_task_reads_only_axial_chest_ct_and_says_why_not():
    chest = {"Modality": "CT", "plane": "axial", "BodyPartExamined": "CHEST", "lung_fields": "found", "colour": "no"}
    assert MEDICAL.inapplicable_image(chest) is None
    assert MEDICAL.inapplicable_image({**chest, "BodyPartExamined": "chest"}) is None  # DICOM writers vary in case
    assert MEDICAL.inapplicable_image({**chest, "BodyPartExamined": "HEAD"}) == (
        "the DICOM's BodyPartExamined is HEAD; medical_report reads axial chest CT slices"
    )
    assert MEDICAL.inapplicable_image({**chest, "lung_fields": "none"}) == "not a chest CT slice: no lung fields found"
    assert "a colour image" in MEDICAL.inapplicable_image({"colour": "yes", "width": "640"})
    assert MEDICAL.inapplicable_image({"colour": "no", "width": "512"}) is None  # a grey PNG scan: taken as stated
    assert TRIAGE.inapplicable_image({"colour": "yes", "Modality": "MR"}) is None  # triage reads any image


def test_the_abstention_policy_is_one_function_with_its_reasons():
    measured_none = {"lesion_measurement": "hu-1", "lung_fields": "found", "lesion_count": "0"}
    measured_one = {"lesion_measurement": "hu-1", "lung_fields": "found", "lesion_count": "1", "lesion_diameters_mm": "12", "lesion_sides": "left"}
    assert "record alone is not a diagnosis" in withheld(MEDICAL, "nodule", 0.99, {"text"}, 0.5, {})
    assert withheld(MEDICAL, "nodule", 0.99, {"image", "text"}, 0.5, measured_one) == ""
    assert "no lesion was measured" in withheld(MEDICAL, "nodule", 0.99, {"image"}, 0.5, measured_none)
    assert "has a measured lesion" in withheld(MEDICAL, "normal", 0.99, {"image"}, 0.5, measured_one)
    failed = {"lesion_measurement": "hu-1: not measured (no usable pixel spacing)"}
    assert "could not be measured (no usable pixel spacing)" in withheld(MEDICAL, "normal", 0.99, {"image"}, 0.5, failed)
    assert withheld(MEDICAL, "nodule", 0.99, {"image"}, 0.5, {"colour": "no"}) == ""  # a PNG: not measured, not failed
    assert "below the task's threshold of 0.70" in withheld(TRIAGE, "login", 0.6, {"image"}, 0.7, {})
    assert withheld(TRIAGE, "login", 0.7, {"text"}, 0.7, {}) == ""
    # A message alone, unlike every validation message: its confidence was never checked.
    assert "message is unlike every message" in withheld(TRIAGE, "payment", 0.99, {"text"}, 0.7, {}, (), frozenset({"text"}))
    assert withheld(TRIAGE, "payment", 0.99, {"text", "image"}, 0.7, {}, (), frozenset({"text"})) == ""  # the screen reads too
    assert withheld(TRIAGE, "payment", 0.99, {"image"}, 0.7, {}, (), frozenset({"image"})) == ""  # a new layout is still read
    unvouched = "the screenshot is unlike every screen the task was checked on and its likeliest status paragraph unlike ..."
    assert withheld(TRIAGE, "payment", 0.99, {"image"}, 0.7, {}, (), frozenset({"image"}), unvouched=unvouched).startswith(unvouched + ", so how sure")
    elsewhere = "the message and screen text read like matters the task does not handle (out-of-scope score 0.61, above 0.48)"
    assert withheld(TRIAGE, "crash", 0.99, {"text", "image"}, 0.7, {}, out_of_scope=elsewhere) == elsewhere


def _scope_inputs(generator, centre: torch.Tensor, count: int, screen: bool = True) -> list[dict]:
    """Made-up message and screen-text vectors scattered around `centre` (a topic)."""
    items = []
    for _ in range(count):
        item = {"text": centre + 0.6 * torch.randn(5, 384, generator=generator)}
        if screen:
            item["image_text"] = centre + 0.6 * torch.randn(3, 384, generator=generator)  # three paragraphs
        items.append(item)
    return items


def test_the_scope_check_is_learned_from_inputs_about_other_matters(tmp_path):
    """router/scope.py: a logistic regression on the message's and screen text's mean
    vectors, its threshold the highest score of a validation input in scope, so none of
    those is withheld; inputs about another topic score above it, an input without screen
    text (a message alone) is not judged, and the check is stored and read back whole."""
    from modalmesh.router import scope

    generator = torch.Generator().manual_seed(0)
    task, other = torch.randn(384, generator=generator), torch.randn(384, generator=generator)
    train_in, val_in = _scope_inputs(generator, task, 120), _scope_inputs(generator, task, 40)
    train_out, val_out = _scope_inputs(generator, other, 30) + _scope_inputs(generator, other, 10, screen=False), _scope_inputs(generator, other, 12)
    check, summary = scope.fit(train_in, train_out, val_in, val_out)
    assert check is not None and summary is not None
    assert max(check.score(item) for item in val_in) == check.threshold
    assert all(check.reason(item) == "" for item in val_in)
    assert summary["val_out_caught"] == 12 and summary["val_out"] == 12 and summary["weight_decay"] in scope.WEIGHT_DECAYS
    unseen = _scope_inputs(generator, other, 5) + [{"image_text": item["image_text"]} for item in _scope_inputs(generator, other, 5)]
    assert all(check.reason(item).startswith("the message and screen text read like matters the task does not handle") for item in unseen)
    assert all(check.score(item) is None and check.reason(item) == "" for item in _scope_inputs(generator, other, 5, screen=False))
    assert check.score({"audio": torch.randn(40, 80)}) is None and check.reason({}) == ""
    check.save(tmp_path)
    again = scope.load(tmp_path)
    assert again is not None and torch.equal(again.weight, check.weight) and again.threshold == pytest.approx(check.threshold)
    assert scope.load(tmp_path / "elsewhere") is None
    (tmp_path / scope.FILE_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a scope check"):
        scope.load(tmp_path)
    assert scope.fit(train_in, [], val_in, val_out) == (None, None)  # nothing out of scope to learn from


def test_an_input_that_alone_reads_another_label_is_pooled_into_the_answer():
    """A misread screen (a mail client's "Stack overflow in checkout module" read as
    `other`) outvoted a clear message ("The checkout page closes as soon as it starts") at
    0.97. A modality that, read alone, gives another label >= DISSENT is averaged in."""
    from modalmesh.router.fusion import FusionConfig, FusionModel
    from modalmesh.router.tasks import DISSENT, decide, fuse

    widths = {"text": 8, "image": 8, "image_text": 8, "audio": 8, "audio_text": 8}
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(labels=TRIAGE.labels, input_widths=widths)).eval()
    with torch.no_grad():
        model.log_temperature.fill_(-3.0)  # sharp: each input alone reads one label surely
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        text, image = torch.randn(2, 8, generator=generator), torch.randn(3, 8, generator=generator)
        alone_text = fuse(model, TRIAGE, {"text": text}, {}).probabilities
        alone_image = fuse(model, TRIAGE, {"image": image}, {}).probabilities
        both = fuse(model, TRIAGE, {"text": text, "image": image}, {}).probabilities
        # The two inputs read different labels surely, and the fused answer sides with one of them.
        if (
            alone_text.argmax() != alone_image.argmax()
            and min(alone_text.max(), alone_image.max()) >= DISSENT
            and int(both.argmax()) in (int(alone_text.argmax()), int(alone_image.argmax()))
        ):
            break
    else:
        pytest.fail("no pair of inputs that read different labels alone")
    decided = decide(model, TRIAGE, {"text": text, "image": image}, {})
    dissenter = alone_image if int(both.argmax()) == int(alone_text.argmax()) else alone_text
    assert len(decided.dissent) == 1 and "alone reads as" in decided.dissent[0]
    assert torch.allclose(decided.probabilities, (both + dissenter) / 2, atol=1e-5)
    assert float(decided.probabilities.max()) <= (1 + (1 - DISSENT)) / 2 + 1e-6  # never sure past what the dissent allows
    # One input has no one to disagree with: its answer is the fused one.
    single = decide(model, TRIAGE, {"text": text}, {})
    assert single.dissent == () and torch.equal(single.probabilities, alone_text)
    # The router reads the inputs alone on a second thread (`beside`): the same decision.
    from concurrent.futures import ThreadPoolExecutor

    started = []
    with ThreadPoolExecutor(1) as other:

        def beside(work):
            started.append(work)
            return other.submit(work).result

        threaded = decide(model, TRIAGE, {"text": text, "image": image}, {}, beside=beside)
        assert len(started) == 1 and threaded.dissent == decided.dissent and torch.equal(threaded.probabilities, decided.probabilities)
        assert decide(model, TRIAGE, {"text": text}, {}, beside=beside).dissent == () and len(started) == 1  # nothing to read alone
    # A request keeps its lone readings (AloneReadings) while a modality's inputs are the same
    # tensors: deciding again as encoders answer, or after reading ahead, reads nothing twice.
    from modalmesh.router.tasks import AloneReadings

    kept, reads = AloneReadings(), []

    def counted(value):
        def read():
            reads.append(value)
            return value

        return read

    one = torch.tensor([1.0])
    assert kept.get("text", {"text": text}, {}, counted(one)) is one and reads == [one]
    assert kept.get("text", {"text": text}, {}, counted(torch.tensor([2.0]))) is one and len(reads) == 1  # the same inputs
    assert float(kept.get("text", {"text": text.clone()}, {}, counted(torch.tensor([3.0])))) == 3.0  # other tensors: read again
    assert float(kept.get("image", {"image": image}, {"a": "1"}, counted(torch.tensor([4.0])))) == 4.0
    assert float(kept.get("image", {"image": image}, {"a": "2"}, counted(torch.tensor([5.0])))) == 5.0  # other tags: read again
    assert len(reads) == 4
    fresh = AloneReadings()
    with_kept = decide(model, TRIAGE, {"text": text, "image": image}, {}, kept=fresh)
    again = decide(model, TRIAGE, {"text": text, "image": image}, {}, kept=fresh)
    assert with_kept.dissent == again.dissent == decided.dissent
    assert torch.equal(with_kept.probabilities, decided.probabilities) and torch.equal(again.probabilities, decided.probabilities)
    # A decision on one modality alone (the text, while the image is still being read) is
    # that modality's lone reading: kept, not read again when the image arrives.
    early = AloneReadings()
    text_first = decide(model, TRIAGE, {"text": text}, {}, kept=early)
    assert kept_reading(early, "text", {"text": text}) is text_first.probabilities
    later = decide(model, TRIAGE, {"text": text, "image": image}, {}, kept=early)
    assert later.dissent == decided.dissent and torch.allclose(later.probabilities, decided.probabilities, atol=1e-6)
    assert kept_reading(early, "text", {"text": text}) is text_first.probabilities  # not read again
    measured = AloneReadings()
    decide(model, TRIAGE, {"text": text}, {"lesion_count": "1"}, kept=measured)  # tags a lone text reading does not have
    assert kept_reading(measured, "text", {"text": text}) is None
    reason = withheld(TRIAGE, "other", 0.49, {"text", "image"}, 0.5, {}, decided.dissent)
    assert "the inputs disagree: the " in reason and "alone reads as" in reason
    # A modality whose confident lone readings were right on validation less often than they
    # claim (each input of a task whose labels combine what several show) is no voice.
    dissenting = "image" if dissenter is alone_image else "text"
    model.config.dissent_precision = {dissenting: DISSENT - 0.05}
    unheard = decide(model, TRIAGE, {"text": text, "image": image}, {})
    assert unheard.dissent == () and torch.allclose(unheard.probabilities, both)
    model.config.dissent_precision = {dissenting: DISSENT}
    assert decide(model, TRIAGE, {"text": text, "image": image}, {}).dissent == decided.dissent
    model.config.dissent_precision = {}
    # The record alone cannot answer the CT task: it is never a dissenting voice there.
    medical = FusionModel(FusionConfig(labels=MEDICAL.labels, regression=MEDICAL.regression, input_widths=widths)).eval()
    assert all("text" not in d for d in decide(medical, MEDICAL, {"text": text, "image": image}, {}).dissent)


def test_the_abstention_threshold_is_the_lowest_with_few_errors_on_validation():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
    # Confident answers are right; the two below 0.7 are wrong.
    confidence = torch.tensor([0.99, 0.95, 0.9, 0.8, 0.99, 0.9, 0.85, 0.75, 0.6, 0.55])
    predicted = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])
    probabilities = torch.zeros(10, 2)
    probabilities[torch.arange(10), predicted] = confidence
    probabilities[torch.arange(10), 1 - predicted] = 1 - confidence
    assert choose_abstain_below(probabilities, labels, risk=0.02) == 0.65
    assert choose_abstain_below(probabilities, labels, risk=0.25) == 0.5
    assert choose_abstain_below(probabilities[:8], labels[:8]) == 0.5  # all right: the floor
    # Wrong however sure: no threshold up to 0.95 is safe. The task's choice is then 0.95;
    # for answers read from one input alone, no threshold of their own is chosen.
    sure_and_wrong = probabilities.clone()
    sure_and_wrong[:, :] = torch.tensor([0.02, 0.98])
    assert lowest_safe_threshold(sure_and_wrong, labels) is None and choose_abstain_below(sure_and_wrong, labels) == 0.95


def test_an_answer_read_from_one_input_alone_meets_its_own_threshold_where_validation_chose_one():
    from modalmesh.router.fusion import FusionConfig, FusionModel
    from modalmesh.router.tasks import TaskModel

    config = FusionConfig(labels=TRIAGE.labels, abstain_below=0.7, abstain_below_alone={"image": 0.8})
    task = TaskModel(TRIAGE, FusionModel(config), "screenshot_triage@test", trained=True)
    assert task.threshold_for({"image"}) == (0.8, " for an answer from the image alone")
    assert task.threshold_for({"text"}) == (0.7, "") and task.threshold_for({"image", "text"}) == (0.7, "")
    threshold, note = task.threshold_for({"image"})
    reason = withheld(TRIAGE, "crash", 0.75, {"image"}, threshold, {}, threshold_note=note)
    assert reason.startswith("confidence 0.75 is below the task's threshold of 0.80 for an answer from the image alone; ")
    assert withheld(TRIAGE, "crash", 0.75, {"image", "text"}, *task.threshold_for({"image", "text"})[:1], {}) == ""


def test_applicability_ranks_inputs_by_their_distance_to_the_training_set(tmp_path):
    generator = torch.Generator().manual_seed(0)
    centre = torch.randn(64, generator=generator)

    def near(n):  # token sequences around one direction, as one task's inputs are
        return [{"image": centre + 0.3 * torch.randn(5, 64, generator=generator)} for _ in range(n)]

    assert applicability.fit(near(60), near(40)).references == {}  # too few validation items to judge by
    fitted = applicability.fit(near(60), near(60))
    assert set(fitted.references) == {"image"} and fitted.references["image"].validation.numel() == 60
    limit = fitted.max_distance("image")
    assert limit == pytest.approx(applicability.MARGIN * float(fitted.references["image"].validation.max()))
    typical = [fitted.judge("image", item["image"]) for item in near(20)]
    # Another direction altogether: an input of another kind.
    unlike = [fitted.judge("image", torch.randn(5, 64, generator=generator)) for _ in range(20)]
    assert all(reason == "" for _, reason in typical) and all("unlike the inputs" in reason for _, reason in unlike)
    assert max(score for score, _ in unlike) == pytest.approx(1 / 61)  # farther than every validation input
    assert all(fitted.unfamiliar("image", score) for score, _ in unlike) and not any(fitted.unfamiliar("image", s) for s, _ in typical[:5])
    assert not fitted.unfamiliar("text", 0.0) and not fitted.unfamiliar("image", None)  # unchecked: not judged
    # Of the same kind but drawn wider than training (another app's screens): beyond every
    # validation input, yet within the margin, so still read.
    wider = [fitted.judge("image", centre + 0.6 * torch.randn(5, 64, generator=generator)) for _ in range(10)]
    assert all(reason == "" for _, reason in wider)
    nearness = [-fitted.distance("image", item["image"]) for item in near(20)]
    assert applicability.auroc(nearness, [-fitted.distance("image", torch.randn(5, 64, generator=generator)) for _ in range(20)]) == 1.0
    assert fitted.score("text", torch.ones(3, 64)) is None  # no reference: not checked
    fitted.save(tmp_path)
    loaded = applicability.Applicability.load(tmp_path)
    assert loaded.margin == fitted.margin and loaded.neighbour == fitted.neighbour
    item = near(1)[0]["image"]
    assert loaded.score("image", item) == pytest.approx(fitted.score("image", item), abs=0.05)  # the bank is stored in FP16
    assert applicability.Applicability.load(tmp_path / "absent").references == {}


def test_an_input_whose_nearest_training_inputs_carry_another_label_says_so(tmp_path):
    """The reference keeps the label each training input shows: an input's k nearest
    training inputs give a verdict when most of them agree on a label (or on none), and
    disagree with an answer of another label; without labels (older files) there is no
    verdict."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(2, 64, generator=generator)

    def near(label, n):
        return [{"text": centres[label] + 0.2 * torch.randn(4, 64, generator=generator)} for _ in range(n)]

    train = near(0, 40) + near(1, 40)
    labels = [0] * 40 + [1] * 40
    fitted = applicability.fit(train, near(0, 30) + near(1, 30), labels=labels)
    probe = near(1, 1)[0]["text"]
    assert fitted.neighbours("text", probe) == (1, 5, 5)
    assert fitted.disagrees("text", probe, 0) == (1, 5, 5) and fitted.disagrees("text", probe, 1) is None
    halfway = (centres[0] + centres[1]).expand(4, 64)  # as near to both: no label has most of the five
    verdict = fitted.neighbours("text", halfway)
    assert verdict is not None and (verdict[1] <= 2 or fitted.disagrees("text", halfway, verdict[0]) is None)
    assert fitted.neighbours("image", probe) is None  # no reference for images
    fitted.save(tmp_path)
    loaded = applicability.Applicability.load(tmp_path)
    assert loaded.disagrees("text", probe, 0) == (1, 5, 5)  # the labels are stored with the bank
    assert applicability.fit(train, near(0, 30) + near(1, 30)).neighbours("text", probe) is None  # no labels given
    # What each input alone shows, where the manifest says (alone_labels), is its label in the
    # reference: the label-1 items' messages here name no problem (-1), so the verdict is "none",
    # which disagrees with every answer; the image of the same items keeps the item's label.
    both = [{**item, "image": item["text"]} for item in train]
    shown = [{}] * 40 + [{"text": -1}] * 40
    fitted = applicability.fit(both, [{**i, "image": i["text"]} for i in near(0, 30) + near(1, 30)], labels=labels, shown=shown)
    assert fitted.neighbours("text", probe) == (-1, 5, 5) and fitted.disagrees("text", probe, 1) == (-1, 5, 5)
    assert fitted.neighbours("image", probe) == (1, 5, 5)
    fitted.save(tmp_path)
    assert applicability.Applicability.load(tmp_path).neighbours("text", probe) == (-1, 5, 5)
    # As an answer's reason (tasks.neighbours_disagree), for a task whose messages are checked.
    config = FusionConfig(labels=TRIAGE.labels, neighbour_precision={"text": 0.8})
    task = SimpleNamespace(model=SimpleNamespace(config=config), applicability=fitted, spec=TRIAGE)
    said = neighbours_disagree(task, {"text"}, {"text": probe}, 1)
    assert said == "the text is most like training inputs that show none of the task's labels (5 of its 5 nearest)"
    assert neighbours_disagree(task, {"text", "image"}, {"text": probe}, 1) == ""  # read with another input: not checked


def test_the_neighbours_check_is_on_where_its_flagged_answers_are_wrong_beyond_the_tasks_risk():
    """train.neighbour_precision counts the validation answers read alone (at the task's
    threshold) that the nearest training inputs contradict, judged by what the input alone
    shows; it is written (the check on) only where more of them were wrong than the task's
    3% risk bound explains. The alone thresholds are then chosen without the readings the
    check withholds (train.neighbours_kept)."""
    generator = torch.Generator().manual_seed(2)
    centres = torch.randn(2, 64, generator=generator)

    def near(label):
        return {"text": centres[label] + 0.2 * torch.randn(4, 64, generator=generator)}

    def example(features, label, alone=None):
        return Example(features, label, torch.zeros(0), torch.zeros(0, dtype=torch.bool), {}, torch.zeros(0), alone or {})

    reference = applicability.fit([near(0) for _ in range(20)] + [near(1) for _ in range(20)], [near(0) for _ in range(60)], labels=[0] * 20 + [1] * 20)
    # Five messages like label-1 training messages, each read alone as label 0 at 0.75.
    like_one = [near(1) for _ in range(5)]
    alone = [[("text", torch.tensor([0.75, 0.25]))] for _ in like_one]
    wrong_twice = [example(f, 1) for f in like_one[:2]] + [example(f, 0) for f in like_one[2:]]
    assert beyond_risk(2, 5) and not beyond_risk(1, 5) and not beyond_risk(0, 5)
    assert neighbour_precision(wrong_twice, alone, reference, 0.7) == {"text": 0.4}  # 2 of 5 wrong: far above 3%
    assert neighbour_precision([example(f, 0) for f in like_one[1:]] + [example(like_one[0], 1)], alone, reference, 0.7) == {}  # 1 of 5: chance
    assert neighbour_precision(wrong_twice, alone, reference, 0.8) == {}  # none given at 0.8
    # Judged by what the message shows: a misleading message (item label 1) read as what it says is right.
    shown = [example(f, 1, {"text": 0}) for f in like_one[:2]] + wrong_twice[2:]
    assert neighbour_precision(shown, alone, reference, 0.7) == {}
    # The readings the check withholds are left out of the alone thresholds' choice.
    assert neighbours_kept(wrong_twice, alone, reference, {"text": 0.4}) == [[] for _ in like_one]
    assert neighbours_kept(wrong_twice, alone, reference, {}) == alone


def test_an_inputs_own_threshold_is_chosen_against_what_that_input_alone_shows():
    """choose_alone_thresholds judges a lone reading by the manifest's alone_labels where it
    gives one: a misleading message read as what it says is right, a vague message answered
    at all is wrong (-1); without alone_labels the item's label is the truth."""

    def example(label, alone=None):
        return Example({}, label, torch.zeros(0), torch.zeros(0, dtype=torch.bool), {}, torch.zeros(0), alone or {})

    # 40 messages that say what their item is about, read right at 0.9; 10 that say label 1
    # about label-0 items, read as label 1 at 0.9; 10 vague ones read as label 0 at 0.75.
    examples = [example(0) for _ in range(40)] + [example(0, {"text": 1}) for _ in range(10)] + [example(0, {"text": -1}) for _ in range(10)]
    alone = [[("text", torch.tensor([0.9, 0.1]))] for _ in range(40)] + [[("text", torch.tensor([0.1, 0.9]))] for _ in range(10)]
    alone += [[("text", torch.tensor([0.75, 0.25]))] for _ in range(10)]
    assert examples[40].truth_alone("text") == 1 and examples[40].truth_alone("image") == 0
    # Judged by what each message shows: only the vague ones are wrong, and all sit below 0.9.
    assert choose_alone_thresholds(examples, alone, 0.5) == {
        "text": lowest_safe_threshold(torch.stack([a[0][1] for a in alone]), torch.tensor([0] * 40 + [1] * 10 + [-1] * 10))
    }
    assert 0.75 < choose_alone_thresholds(examples, alone, 0.5)["text"] <= 0.9
    # Judged by the items' labels, the misleading messages read right look wrong at 0.9: only
    # a threshold above every reading (0.95: nothing answered) is safe.
    plain = [example(0) for _ in range(60)]
    assert choose_alone_thresholds(plain, alone, 0.5) == {"text": 0.95}


def test_an_answer_read_from_one_input_alone_is_withheld_when_its_neighbours_say_otherwise():
    reason = withheld(TRIAGE, "login", 0.96, {"text"}, 0.7, {}, neighbours="the text is most like training inputs labelled shipping (5 of its 5 nearest)")
    assert reason.startswith("the text is most like training inputs labelled shipping (5 of its 5 nearest), not login; ")
    assert withheld(TRIAGE, "login", 0.96, {"text"}, 0.7, {}) == ""
    assert withheld(TRIAGE, "login", 0.5, {"text"}, 0.7, {}, neighbours="x").startswith("confidence 0.50 is below")  # the first reason is given


# ------------------------------------------------------------------ real files, real mesh


@pytest.fixture(scope="module")
def router(mesh):
    with connect(mesh.router.address) as channel:
        yield router_pb2_grpc.RouterStub(channel)


def analyze(stub, task, **fields):
    return stub.Analyze(router_pb2.AnalyzeRequest(task=task, **fields), timeout=60)


def image_report(response):
    return next(r for r in response.explanation.modalities if r.modality == router_pb2.MODALITY_IMAGE)


def photo(name: str) -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def pydicom_file(name: str) -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name)).read_bytes()


LESION_FINDINGS = {"lesion_count", "largest_diameter_mm", "side", "estimated_largest_diameter_mm"}


@pytest.mark.parametrize(
    "name, image, why",
    [
        ("head CT, no BodyPartExamined", lambda: pydicom_file("693_J2KI.dcm"), "no lung fields found"),
        ("head CT tagged HEAD", lambda: pydicom_file("J2K_pixelrep_mismatch.dcm"), "BodyPartExamined is HEAD"),
        ("chest crop, lungs cut by the border", lambda: pydicom_file("CT_small.dcm"), "no lung fields found"),
        ("MR", lambda: pydicom_file("MR_small.dcm"), "Modality is MR"),
        ("colour photo", lambda: photo("astronaut"), "a colour image"),
        ("screenshot", lambda: image_bytes(render_screenshot("Error 402: Payment declined")), "a colour image"),
    ],
)
def test_the_ct_task_gives_no_finding_on_an_image_it_cannot_read(router, name, image, why):
    for text in ("", "64-year-old smoker, 40 pack-years, persistent cough."):
        response = analyze(router, "medical_report", text=text, image=router_pb2.MediaInput(data=image()))
        report = image_report(response)
        assert STATUS(report.status) == "MODALITY_STATUS_NOT_APPLICABLE" and why in report.reason, name
        assert response.abstained and response.label == "uncertain", name
        findings = {f.key: f.value for f in response.findings}
        assert LESION_FINDINGS.isdisjoint(findings) and " mm" not in response.description.split("Impression:")[-1], name
        assert why in response.abstain_reason or "record alone" in response.abstain_reason, name


def test_a_measured_chest_slice_is_answered_with_measured_findings(router):
    from modalmesh.data.ct import make_phantom, write_ct_dicom
    from modalmesh.data.generate import PHANTOM_SIZE

    phantom = make_phantom(77, size=PHANTOM_SIZE, lesion_count=0)
    scan = write_ct_dicom(phantom.hounsfield, (phantom.pixel_spacing_mm,) * 2, uid_seed="honest-answers")
    response = analyze(
        router, "medical_report", text="70-year-old never smoker, fatigue.", image=router_pb2.MediaInput(data=scan, parameters={"window": "lung"})
    )
    assert STATUS(image_report(response).status) == "MODALITY_STATUS_USED"
    findings = {f.key: f.value for f in response.findings}
    assert findings["lesion_count"] == "0" and findings["side"] == "none"
    assert response.label in ("normal", "uncertain") and (response.label == "uncertain") == response.abstained
    # A toy slice (no vessels, no ribs, no noise) is unlike every phantom the task was trained on.
    toy = analyze(router, "medical_report", image=router_pb2.MediaInput(data=ct_dicom(phantom_hu(256), pixel_spacing=(0.7, 0.7))))
    assert STATUS(image_report(toy).status) == "MODALITY_STATUS_NOT_APPLICABLE" and toy.abstained
    assert "unlike the inputs the task was trained on" in image_report(toy).reason


def test_a_ct_slice_without_a_pixel_spacing_says_so_and_is_not_diagnosed(router):
    """A chest CT DICOM with its densities but no PixelSpacing cannot be measured in mm: the
    report said "the image carries no densities (HU) to measure". The measurement now says
    what is missing, and the answer is withheld as for any measurement that failed."""
    import pydicom

    from modalmesh.data.ct import make_phantom, write_ct_dicom
    from modalmesh.data.generate import PHANTOM_SIZE

    phantom = make_phantom(78, size=PHANTOM_SIZE, lesion_count=1)
    dataset = pydicom.dcmread(io.BytesIO(write_ct_dicom(phantom.hounsfield, (phantom.pixel_spacing_mm,) * 2, uid_seed="no-spacing")))
    del dataset.PixelSpacing
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    response = analyze(router, "medical_report", image=router_pb2.MediaInput(data=buffer.getvalue(), parameters={"window": "lung"}))
    assert response.abstained and response.label == "uncertain", (response.label, response.abstain_reason)
    assert "could not be measured (no usable pixel spacing: none given" in response.abstain_reason, response.abstain_reason
    assert "no densities" not in response.description and "no usable pixel spacing" in response.description, response.description


@pytest.mark.parametrize(
    "name, image",
    [
        ("CT slice", lambda: _ct_png()),
        ("photo", lambda: photo("chelsea")),
        ("greyscale photo", lambda: photo("camera")),
    ],
)
def test_triage_does_not_answer_from_a_scan_or_a_photo(router, name, image):
    """A CT slice sent to screenshot_triage was answered `login` at 0.77."""
    response = analyze(router, "screenshot_triage", image=router_pb2.MediaInput(data=image()))
    report = image_report(response)
    assert STATUS(report.status) == "MODALITY_STATUS_NOT_APPLICABLE", name
    assert "unlike the inputs the task was trained on" in report.reason and report.HasField("applicability"), name
    assert response.abstained and response.label == "uncertain" and "nothing screenshot_triage reads" in response.abstain_reason
    # With a message the answer comes from the message alone, and says the image was not used
    # (FULL: the image is waited for, not skipped because the message is already decisive).
    full = router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL)
    answered = analyze(router, "screenshot_triage", text="my card was declined at checkout", image=router_pb2.MediaInput(data=image()), options=full)
    assert STATUS(image_report(answered).status) == "MODALITY_STATUS_NOT_APPLICABLE" and answered.label in ("payment", "uncertain")


def _notes(seconds: float = 4.0):
    """A few notes played in turn: audio with no speech in it."""
    t = np.arange(int(seconds * 16000)) / 16000
    notes = sum(np.sin(2 * np.pi * f * t) * (np.sin(np.pi * 0.5 * t * k) > 0) for k, f in enumerate((262, 330, 392, 523), 1))
    return (0.2 * notes).astype(np.float32)


@pytest.mark.parametrize("mode", [router_pb2.ROUTING_MODE_FULL, router_pb2.ROUTING_MODE_ROUTED])
@pytest.mark.parametrize(
    "name, sound",
    [("notes", _notes), ("white noise", lambda: np.random.default_rng(5).normal(0, 0.1, 3 * 16000).astype(np.float32))],
)
def test_a_voice_message_without_speech_is_not_read(router, name, sound, mode):
    """Both built-in tasks read spoken audio: a clip in which the audio service's speech
    detection finds no speech (music, noise) was used with half the gate's weight; it is
    NOT_APPLICABLE, says why, and nothing of it (its transcript neither) reaches the answer."""
    clip = router_pb2.MediaInput(data=wav_bytes(sound(), 16000), media_type="audio/wav")
    options = router_pb2.AnalyzeOptions(mode=mode, explain=True)
    response = analyze(router, "screenshot_triage", text="my card was declined at checkout", audio=clip, options=options)
    report = next(r for r in response.explanation.modalities if r.modality == router_pb2.MODALITY_AUDIO)
    assert STATUS(report.status) == "MODALITY_STATUS_NOT_APPLICABLE", (name, report.reason)
    assert report.reason.startswith("no speech in the audio (speech detection found none); screenshot_triage reads voice messages"), report.reason
    assert report.gate_weight == 0 and "Voice message" not in response.description and response.label in ("payment", "uncertain")
    alone = analyze(router, "screenshot_triage", audio=clip, options=options)
    assert alone.abstained and alone.label == "uncertain" and "nothing screenshot_triage reads" in alone.abstain_reason
    # Speech is read: the demo's voice message is used.
    voice = router_pb2.MediaInput(data=(Path(__file__).resolve().parent.parent / "examples" / "voice.wav").read_bytes(), media_type="audio/wav")
    spoken = analyze(router, "screenshot_triage", text="my card was declined at checkout", audio=voice, options=options)
    assert STATUS(next(r for r in spoken.explanation.modalities if r.modality == router_pb2.MODALITY_AUDIO).status) == "MODALITY_STATUS_USED"


def test_a_voice_message_in_another_language_is_not_quoted_as_what_was_said(router):
    """Spanish speech decoded by an English recogniser comes out as words nobody said
    ("Mipake Tenoha ..."); the audio service flags it (under the recogniser's floor) and
    the router neither reads nor quotes that transcript, and says why. The recording
    itself is still read."""
    from modalmesh.audio.speech import espeak

    spanish = wav_bytes(espeak().synthesize("Mi paquete no ha llegado todavía, ¿dónde está?", "es", 160), 22050)
    clip = router_pb2.MediaInput(data=spanish, media_type="audio/wav")
    for mode in (router_pb2.ROUTING_MODE_ROUTED, router_pb2.ROUTING_MODE_FULL):
        options = router_pb2.AnalyzeOptions(mode=mode, explain=True)
        response = analyze(router, "screenshot_triage", text="my card was declined at checkout", audio=clip, options=options)
        report = next(r for r in response.explanation.modalities if r.modality == router_pb2.MODALITY_AUDIO)
        assert STATUS(report.status) == "MODALITY_STATUS_USED", report.reason
        assert report.reason.startswith("transcript not used: the recogniser's confidence"), report.reason
        assert "Voice message (transcript)" not in response.description, response.description
    # With a screen in another language too, nothing read vouches for an answer: the voice's words were not read.
    german = _checkout(["Kasse", "Zahlung fehlgeschlagen: Ihre Karte wurde abgelehnt.", "Bitte versuchen Sie es mit einer anderen Karte."])
    response = analyze(router, "screenshot_triage", image=router_pb2.MediaInput(data=german), audio=clip)
    assert response.abstained and "the screenshot is unlike every screen the task was checked on" in response.abstain_reason, response.abstain_reason


def test_a_patient_record_sent_as_a_support_message_is_not_answered(router):
    """A record is unlike every message the triage task was checked on; read alone it is
    withheld (as a cosine its distance never reaches the applicability margin)."""
    response = analyze(router, "screenshot_triage", text="39M, current smoker 57 pk-yr. CP x5/52.")
    assert response.abstained and response.label == "uncertain", (response.label, response.confidence)
    assert "message is unlike every message the task was checked on" in response.abstain_reason
    ordinary = analyze(router, "screenshot_triage", text="my card was declined at checkout")
    assert "unlike every message" not in ordinary.abstain_reason


def test_a_message_read_unlike_the_training_messages_it_resembles_is_withheld(router):
    """Read alone, "tracking hasnt moved in a week" (held-out wording) comes out `login` at
    0.96, while its five nearest training messages are all about shipping: the answer is
    withheld and says so. A message the heads read as its neighbours do is answered."""
    response = analyze(router, "screenshot_triage", text="tracking hasnt moved in a week")
    assert response.abstained and response.label == "uncertain", (response.label, response.confidence, response.abstain_reason)
    assert "most like training inputs labelled shipping" in response.abstain_reason and "not login" in response.abstain_reason
    ordinary = analyze(router, "screenshot_triage", text="my parcel has not arrived")
    assert not ordinary.abstained and ordinary.label == "shipping", (ordinary.label, ordinary.abstain_reason)
    # ListTasks says which inputs get the check: triage messages; nothing of the CT task (on
    # validation the scans it would have flagged were answered right).
    tasks = {t.name: t for t in router.ListTasks(router_pb2.ListTasksRequest(), timeout=10).tasks}
    assert list(tasks["screenshot_triage"].neighbour_checked) == [router_pb2.MODALITY_TEXT]
    assert list(tasks["medical_report"].neighbour_checked) == []
    # And the thresholds of answers read from one input alone, where validation needs a higher one.
    assert {m: round(t, 2) for m, t in tasks["screenshot_triage"].abstain_below_alone.items()} == {"image": 0.8}
    assert dict(tasks["medical_report"].abstain_below_alone) == {}


def test_the_command_line_lists_what_makes_a_task_withhold_an_answer(mesh, capsys):
    from modalmesh.cli import main

    assert main(["tasks", "--router", mesh.router.address]) == 0
    out = capsys.readouterr().out
    said = "withheld: below confidence 0.70, 0.80 from the image alone; read from one input alone"
    assert f"{said} and labelled otherwise by its nearest training inputs: text; about other matters: out-of-scope score above 0.48" in out
    assert "withheld: below confidence 0.50; read from one input alone and labelled otherwise by its nearest training inputs: none" in out


@pytest.mark.parametrize("screen", ["Your order has been delivered. Enjoy!", "Thanks! We've received your payment."])
def test_a_success_screen_is_no_problem_and_the_reply_does_not_apologise(router, screen):
    """A success screen ("Your order has shipped!") was answered `shipping` at 1.00 with an
    apology. These wordings are the held-out set's own, in no training pool."""
    response = analyze(router, "screenshot_triage", image=router_pb2.MediaInput(data=image_bytes(render_screenshot(screen))))
    findings = {f.key: f.value for f in response.findings}
    assert response.label in ("other", "uncertain"), (screen, response.label, response.confidence)
    assert "sorry" not in findings["reply"].lower() and findings["error_text"] == "" and "error_text_confidence" not in findings, findings
    if response.label == "other":
        assert "no problem found" in response.description


def _terminal(lines: list[str]) -> bytes:
    """A dark terminal window drawn here (no renderer of the data generators)."""
    from PIL import ImageDraw, ImageFont

    image = Image.new("RGB", (1100, 620), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 1100, 40), fill=(60, 60, 60))
    draw.text((20, 10), "Terminal - deploy.sh", fill=(220, 220, 220), font=ImageFont.load_default(size=20))
    for index, line in enumerate(lines):
        draw.text((20, 70 + 40 * index), line, fill=(220, 220, 220), font=ImageFont.load_default(size=20))
    return image_bytes(image)


def _checkout(lines: list[str]) -> bytes:
    """A plain checkout page drawn here, in whatever language `lines` are."""
    from PIL import ImageDraw, ImageFont

    image = Image.new("RGB", (1024, 640), "white")
    draw = ImageDraw.Draw(image)
    draw.text((40, 40), lines[0], fill="black", font=ImageFont.load_default(size=32))
    for index, line in enumerate(lines[1:]):
        draw.text((40, 120 + 50 * index), line, fill=(200, 0, 0) if index == 0 else "black", font=ImageFont.load_default(size=20))
    return image_bytes(image)


@pytest.mark.parametrize(
    "message, image",
    [
        (
            "deploy keeps failing",
            _terminal(["$ ./deploy.sh --prod", "Uploading bundle... done", "Error: connection to db-primary:5432 refused", "Deploy failed after 3 retries"]),
        ),
        ("Zahlung geht nicht", _checkout(["Kasse", "Zahlung fehlgeschlagen: Ihre Karte wurde abgelehnt.", "Bitte versuchen Sie es mit einer anderen Karte."])),
    ],
    ids=["another kind of software", "another language"],
)
def test_a_screen_and_message_unlike_anything_the_task_knows_are_not_answered(router, message, image):
    """A terminal's deploy error with a message about it was answered `shipping` (0.74), a
    German checkout page with a German message `crash` (0.79): the screenshot unlike every
    screen the task was checked on, its status text unlike every status message it was
    trained on, and the message unfamiliar or read otherwise by its nearest training
    messages. Nothing read vouches for the answer: it is withheld and says why."""
    for mode in (router_pb2.ROUTING_MODE_ROUTED, router_pb2.ROUTING_MODE_FULL):
        options = router_pb2.AnalyzeOptions(mode=mode, explain=True)
        response = analyze(router, "screenshot_triage", text=message, image=router_pb2.MediaInput(data=image), options=options)
        assert response.abstained and response.label == "uncertain", (message, response.label, response.confidence, response.abstain_reason)
        assert "the screenshot is unlike every screen the task was checked on" in response.abstain_reason, response.abstain_reason
        assert STATUS(image_report(response).status) == "MODALITY_STATUS_USED"  # still a screenshot: read, not refused
    # The same kind of page in English, with a message the task knows: answered.
    english = _checkout(["Checkout", "Payment failed: your card was declined.", "Please try another card."])
    response = analyze(router, "screenshot_triage", text="my card was declined at checkout", image=router_pb2.MediaInput(data=english))
    assert not response.abstained and response.label == "payment", (response.label, response.abstain_reason)


def test_a_screen_and_message_about_other_matters_are_not_answered(router):
    """An office printer's failed print job, drawn like the shop's own error dialogs, with
    a message about it was answered `crash` (0.96): its status text reads like a crash
    message, and the screen and message are familiar enough for every other check. The
    scope check, learned from the training manifest's inputs about other matters (none
    of them about printers), withholds it and says why; the same dialog about a declined
    card is answered."""
    printer = image_bytes(render_screenshot("Print job failed: printer out of toner"))
    for mode in (router_pb2.ROUTING_MODE_ROUTED, router_pb2.ROUTING_MODE_FULL):
        options = router_pb2.AnalyzeOptions(mode=mode)
        response = analyze(router, "screenshot_triage", text="the office printer is out of toner", image=router_pb2.MediaInput(data=printer), options=options)
        assert response.abstained and response.label == "uncertain", (response.label, response.confidence, response.abstain_reason)
        assert response.abstain_reason.startswith("the message and screen text read like matters the task does not handle"), response.abstain_reason
        # A person routes it: the next steps and the reply say it reads like something other than the shop's matters.
        findings = {f.key: f.value for f in response.findings}
        assert findings["priority"] == "normal" and findings["next_steps"].startswith("It reads like something other than what this queue handles"), findings
        assert "not sure this is something we can help with here" in findings["reply"] and "sorry" not in findings["reply"].lower()
    card = image_bytes(render_screenshot("Payment declined: card expired"))
    response = analyze(router, "screenshot_triage", text="my card was declined at checkout", image=router_pb2.MediaInput(data=card))
    assert not response.abstained and response.label == "payment", (response.label, response.abstain_reason)


def test_a_message_about_other_matters_sent_alone_is_not_answered(router):
    """The scope check judges screenshots only; a message alone about other matters (the
    held-out set's, never trained on) meets the message checks, and none is answered."""
    from modalmesh.data.heldout import OTHER_TOPIC

    for _, message in OTHER_TOPIC:
        response = analyze(router, "screenshot_triage", text=message)
        assert response.abstained and response.label == "uncertain", (message, response.label, response.confidence)
        assert not response.abstain_reason.startswith("the message and screen text read like"), response.abstain_reason


def test_a_screenshot_is_applicable_to_triage_and_scored(router):
    screenshot = image_bytes(render_screenshot("Error 402: Payment declined"))
    report = image_report(analyze(router, "screenshot_triage", image=router_pb2.MediaInput(data=screenshot)))
    # Drawn by another renderer than training's: atypical (beyond every validation screen), still a screenshot.
    assert STATUS(report.status) == "MODALITY_STATUS_USED" and report.HasField("applicability") and report.applicability > 0


def _desktop_dialog(message: str | None) -> bytes:
    """A desktop program's dialog box on a blue desktop, with `message` in it where given: a
    look no training screen has (drawn here, DejaVu Sans)."""
    from modalmesh.data.screens import font

    image = Image.new("RGB", (1280, 800), (0, 90, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((340, 250, 940, 500), fill=(240, 240, 240), outline=(100, 100, 100))
    draw.rectangle((340, 250, 940, 282), fill=(255, 255, 255))
    draw.text((352, 256), "Checkout", fill="black", font=font(16))
    if message:
        draw.text((430, 315), message, fill="black", font=font(15))
    draw.rectangle((820, 450, 920, 480), fill=(225, 225, 225), outline=(0, 120, 215))
    draw.text((858, 455), "OK", fill="black", font=font(15))
    return image_bytes(image)


DECLINED = "Your card was declined. Try another card"


@pytest.mark.parametrize("mode", [router_pb2.ROUTING_MODE_FULL, router_pb2.ROUTING_MODE_ROUTED])
def test_a_screen_of_a_new_look_is_read_where_its_status_message_is_one_the_task_knows(router, mode):
    """A desktop dialog lies far beyond the applicability margin (twice it, as far as photos
    and scans), and such a screenshot was not read at all; its message is a status message
    the pointer knows and is sure of, so the screen is read for it, and the answer says so.
    The same dialog without a message is still not read."""
    options = router_pb2.AnalyzeOptions(mode=mode)
    response = analyze(router, "screenshot_triage", text="I can't pay", image=router_pb2.MediaInput(data=_desktop_dialog(DECLINED)), options=options)
    report = image_report(response)
    assert STATUS(report.status) == "MODALITY_STATUS_USED", report.reason
    assert report.reason.startswith("its look is unlike the inputs the task was trained on (distance ")
    assert "but its status message is like those the task was trained on (read surely, " in report.reason
    assert {f.key: f.value for f in response.findings}["error_text"] == DECLINED and response.label == "payment"
    bare = image_report(analyze(router, "screenshot_triage", text="I can't pay", image=router_pb2.MediaInput(data=_desktop_dialog(None)), options=options))
    assert STATUS(bare.status) == "MODALITY_STATUS_NOT_APPLICABLE" and bare.reason.startswith("unlike the inputs the task was trained on")


def _ct_png() -> bytes:
    from modalmesh.data.ct import make_phantom, windowed_png

    return windowed_png(make_phantom(3, size=384).hounsfield, -600, 1500)


def test_compute_routing_never_answers_the_ct_task_without_its_scan():
    """The scan is what medical_report cannot answer without: an early answer from the record
    while the scan is outstanding would only be withheld. The routing simulation (what
    thresholds are tuned on) holds the same rule as the router's gather loop."""
    from modalmesh.router.routing import routing_cases
    from modalmesh.router.fusion import FusionConfig, FusionModel
    from modalmesh.router.train import Example

    torch.manual_seed(0)
    model = FusionModel(FusionConfig(labels=MEDICAL.labels, regression=MEDICAL.regression)).eval()
    features = {"text": torch.randn(6, 384), "image": torch.randn(49, 1280)}
    example = Example(features, 0, torch.zeros(3), torch.zeros(3, dtype=torch.bool), {}, torch.zeros(3))

    class Item:  # the text arrives long before the scan
        costs_ms = {"text": 10.0, "image": 500.0}

    cases = routing_cases(model, MEDICAL, [example], [Item()], fuse_ms=1.0)
    assert cases[0].checkpoints == []  # no decision point while the scan is outstanding
    triage = routing_cases(
        FusionModel(FusionConfig(labels=TRIAGE.labels)).eval(),
        TRIAGE,
        [Example(features, 0, torch.zeros(0), torch.zeros(0, dtype=torch.bool), {}, torch.zeros(0))],
        [Item()],
        fuse_ms=1.0,
        eager=(),
    )
    assert len(triage[0].checkpoints) >= 1  # triage needs nothing in particular: it may answer from the text


def _garbled_error_page() -> bytes:
    """A white page with a JavaScript error in small grey monospace type, blurred and saved
    as a JPEG: at 1280x720 OCR reads its line as garbage ("Unonuphn Tirrar Can r arrti
    of ...") at confidence 0.51."""
    from PIL import Image, ImageDraw, ImageFilter

    from modalmesh.data.screens import web_font

    page = Image.new("RGB", (1280, 720), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    mono = web_font("DejaVuSansMono.ttf", 8)
    draw.text((40, 30), "Uncaught TypeError: Cannot read properties of undefined (reading 'map')", fill=(90, 90, 90), font=mono)
    buffer = io.BytesIO()
    page.filter(ImageFilter.GaussianBlur(0.9)).save(buffer, "JPEG", quality=40)
    return buffer.getvalue()


def test_screen_text_ocr_could_not_read_is_left_out_and_said(router):
    """Text OCR read with low confidence is not evidence (a garbled line must not outweigh a
    clear customer message), and the image's report says how much was left out."""
    from modalmesh.common.layout import MIN_SPAN_CONFIDENCE, screen_paragraphs
    from modalmesh.v1 import encoder_pb2

    spans = [
        encoder_pb2.TextSpan(text="(nes utee tn o r  oe r p", confidence=0.51, box=[40, 30, 600, 42]),
        encoder_pb2.TextSpan(text="at App.render (main.js:1:10422)", confidence=0.98, box=[40, 48, 300, 60]),
        encoder_pb2.TextSpan(text="no confidence given", box=[40, 90, 300, 102]),
    ]
    lines, unreadable, _ = screen_paragraphs(spans)
    assert lines == ["at App.render (main.js:1:10422)", "no confidence given"] and unreadable == 1 and MIN_SPAN_CONFIDENCE > 0.51

    response = analyze(router, "screenshot_triage", text="site shows a blank white page with an error", image=router_pb2.MediaInput(data=_garbled_error_page()))
    report, text = image_report(response), next(r for r in response.explanation.modalities if r.modality == router_pb2.MODALITY_TEXT)
    # A near-empty white page is unlike every training screen: not applicable, or read with
    # its garbled line left out (the report says so); either way the garbage is no evidence
    # and the message is.
    assert STATUS(report.status) == "MODALITY_STATUS_NOT_APPLICABLE" or "unreadable (OCR confidence under 0.65)" in report.reason, report.reason
    assert "Tirrar" not in response.description and not any("Tirrar" in f.value for f in response.findings)
    assert STATUS(text.status) == "MODALITY_STATUS_USED" and response.label != "other", (response.label, response.confidence)


def test_a_garbled_line_comes_with_its_low_confidence_from_one_reading():
    """OCR says how sure it is of each line; a garbled one scores under the router's cut
    (layout.MIN_SPAN_CONFIDENCE) and the page is read once, whatever the caller's time."""
    from modalmesh.common.layout import MIN_SPAN_CONFIDENCE
    from modalmesh.vision.ocr import ScreenReader

    reader = ScreenReader()
    page = np.asarray(Image.open(io.BytesIO(_garbled_error_page())).convert("RGB"))
    calls = []
    once = reader._read_once
    reader._read_once = lambda *args, **kwargs: calls.append(1) or once(*args, **kwargs)  # counts the engine's readings
    text = reader.read(page, timeout=30)
    assert len(text) == 1 and text[0].confidence < MIN_SPAN_CONFIDENCE and "TypeError" not in text[0].text, text
    assert 20 <= text[0].box[1] <= 40 and text[0].box[2] < 600  # the box in the page's own pixels (drawn at y 30)
    assert calls == [1]


def test_out_of_scope_answers_are_counted_by_kind_in_the_evaluation():
    from modalmesh.router.served import Served, honesty_metrics
    from modalmesh.router.tasks import load_task_folder

    task = load_task_folder(TRIAGE, None)  # untrained: only its thresholds and (empty) references are read
    outside = [Served(0, 0.9, ""), Served(0, 0.9, "confidence 0.40 is below"), Served(-1, 0.0, "nothing read"), Served(1, 0.99, "")]
    metrics = honesty_metrics(task, [Served(0, 0.9, "")], np.array([0]), outside, ["topic", "topic", "photo", "language"])
    assert metrics["out_of_scope"]["answered"] == 2
    assert metrics["out_of_scope"]["answered_by_kind"] == {
        "topic": {"items": 2, "answered": 1},
        "photo": {"items": 1, "answered": 0},
        "language": {"items": 1, "answered": 1},
    }
    assert "answered_by_kind" not in honesty_metrics(task, [Served(0, 0.9, "")], np.array([0]), outside)["out_of_scope"]
    # What withheld the ones read (not those the task could not read), the item's own numbers left out.
    assert metrics["out_of_scope"]["withheld_reasons"] == {"confidence below": 1}
    elsewhere = Served(2, 0.97, "the message and screen text read like matters the task does not handle (out-of-scope score 0.65, above 0.48)")
    counted = honesty_metrics(task, [Served(0, 0.9, "")], np.array([0]), outside + [elsewhere, elsewhere])["out_of_scope"]["withheld_reasons"]
    assert counted == {"the message and screen text read like matters the task does not handle": 2, "confidence below": 1}


def test_the_evaluation_counts_transcripts_not_read_as_nothing_heard():
    from modalmesh.router.evaluate import transcript_errors

    records = [{"audio": "a.wav", "extra": {"voice": "my card was declined"}}, {"audio": "b.wav", "extra": {"voice": "where is my parcel"}}]
    items = [
        SimpleNamespace(evidence={"transcript": "my card was declined", "audio_tags": {}}),
        SimpleNamespace(evidence={"transcript": "", "audio_tags": {"transcript_unsure": "the recogniser's confidence 0.01 is under 0.09"}}),
    ]
    result = transcript_errors(records, items)
    assert result is not None and result["clips"] == 2 and result["not_read"] == 1
    assert result["word_error_rate"] == pytest.approx(4 / 8)  # the four words of the unread clip, missed


def test_withholding_reasons_are_counted_by_kind_in_the_evaluation():
    from modalmesh.router.served import _kind

    assert (
        _kind("confidence 0.67 is below the task's threshold of 0.90; a readable screenshot would help")
        == _kind("confidence 0.86 is below the task's threshold of 0.90; a readable screenshot would help")
        == "confidence below the task's threshold of 0.90"
    )
    assert (
        _kind("the classifier suggests mass, but no lesion was measured on the slice")
        == "the classifier suggests mass, but no lesion was measured on the slice"
    )


def kept_reading(kept, name, alone):
    """What AloneReadings holds for `name` with these inputs (None: nothing, it would read)."""
    return kept.get(name, alone, {}, lambda: None)


def _dialog(message: str, advice: str, dark: bool = False, close: bool = False) -> bytes:
    """An account page drawn here (no renderer of the data generators): a title bar, a menu,
    a box with the status message and an advice line under it in smaller grey type (`close`:
    smaller still, directly under the message, as near as a wrapped line would be)."""
    from PIL import ImageDraw

    from modalmesh.data.screens import font

    image = Image.new("RGB", (1366, 768), (30, 30, 30) if dark else (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 1366, 50), fill=(40, 90, 200))
    draw.text((20, 12), "MyShop Account", fill="white", font=font(22))
    draw.text((40, 80), "Home  Orders  Settings  Help", fill=(200, 200, 200) if dark else (60, 60, 60), font=font(16))
    draw.rectangle((383, 250, 983, 420), outline=(200, 0, 0), width=3, fill=(60, 20, 20) if dark else (255, 235, 235))
    draw.text((403, 300), message, fill=(255, 120, 120) if dark else (180, 0, 0), font=font(22))
    draw.text((403, 331 if close else 360), advice, fill=(200, 200, 200) if dark else (80, 80, 80), font=font(15 if close else 16))
    return image_bytes(image)


@pytest.mark.parametrize(
    "label, message",
    [
        ("shipping", "Order #4411 could not be shipped to this address"),
        ("crash", "Unexpected error: NullReferenceException in CartView"),
        ("payment", "We were unable to charge the card ending 1881"),
    ],
)
def test_an_advice_line_under_the_screens_message_is_not_read_as_the_message(router, label, message):
    """A screenshot alone whose message has an advice line under it ("Please try again
    later or contact support.") was answered `login` at 0.88-0.96, the advice line given as
    the error text: no training screen had advice under its message, and the status-line
    pointer took it for the message. These wordings are in no training pool. The answer is
    the message's label or withheld, never another label, and the advice line is not the
    error text."""
    advice = "Please try again later or contact support."
    for mode in (router_pb2.ROUTING_MODE_ROUTED, router_pb2.ROUTING_MODE_FULL):
        options = router_pb2.AnalyzeOptions(mode=mode)
        response = analyze(router, "screenshot_triage", image=router_pb2.MediaInput(data=_dialog(message, advice)), options=options)
        findings = {f.key: f.value for f in response.findings}
        assert response.label in (label, "uncertain"), (message, response.label, response.confidence, findings["error_text"])
        assert advice not in findings["error_text"], findings


@pytest.mark.parametrize("advice", ["Need help? Contact our support team any time.", "Privacy policy and terms of service"])
def test_a_smaller_line_directly_under_the_message_is_not_part_of_the_error_text(router, advice):
    """A line in smaller type directly under the status message (15 against 22 px, 9 px
    apart) was read into the message's paragraph, so `error_text` quoted it after the
    message ("... ending 1881 Need help? Contact our support team any time."): OCR pads
    its boxes, and the two boxes' heights differed by less than the layout's 25%. Their
    widths show the type sizes, a third apart, and the line is a paragraph of its own."""
    from modalmesh.router.status_line import holds_message

    for message in ("Order #4411 could not be shipped to this address", "We were unable to charge the card ending 1881"):
        for dark in (False, True):
            for mode in (router_pb2.ROUTING_MODE_ROUTED, router_pb2.ROUTING_MODE_FULL):
                image = router_pb2.MediaInput(data=_dialog(message, advice, dark=dark, close=True))
                response = analyze(router, "screenshot_triage", image=image, options=router_pb2.AnalyzeOptions(mode=mode))
                error_text = {f.key: f.value for f in response.findings}["error_text"]
                assert not holds_message(error_text, advice), (message, dark, mode, error_text)


def test_a_message_longer_than_the_text_model_reads_is_said_to_be_read_in_part(router):
    """The text model reads 256 tokens: a long e-mail whose problem comes last is answered
    from its start, and the answer says how much of the message that was."""
    import re

    preamble = (
        "Hello team, I have been a loyal customer for many years and I usually love shopping with you. Last week I browsed the new "
        "autumn collection, added a few sweaters and a scarf to my basket, and compared the sizes with the size guide. "
    )
    message = preamble * 5 + "Anyway, the real reason I write: I cannot log in any more, the app says my password is wrong."
    response = analyze(router, "screenshot_triage", text=message)
    text = next(r for r in response.explanation.modalities if r.modality == router_pb2.MODALITY_TEXT)
    assert STATUS(text.status) == "MODALITY_STATUS_USED"
    said = re.fullmatch(
        r"read in part: the text model reads at most (\d+) tokens, its first ([\d,]+) of ([\d,]+) characters; the rest was not read", text.reason
    )
    assert said, text.reason
    read, total = (int(group.replace(",", "")) for group in said.groups()[1:])
    assert total == len(message) and 0 < read < message.index("Anyway")  # the problem was not read
    assert f"(only its first {read:,} of {total:,} characters were read)" in response.description
    if response.abstained:
        assert response.abstain_reason.endswith(
            f"the message was read only in part (its first {read:,} of {total:,} characters): what it says after that was not read"
        )
    short = analyze(router, "screenshot_triage", text="I cannot log in any more, the app says my password is wrong.")
    assert next(r for r in short.explanation.modalities if r.modality == router_pb2.MODALITY_TEXT).reason == ""
    assert "were read)" not in short.description


def test_how_much_of_a_text_was_read_is_said_in_characters_where_the_service_tells():
    """The same words for the message and a long transcript (its modality's reason reads
    "transcript read in part: ..."). A text service that does not say how many characters
    its tokens cover (characters_read 0, as before the field) is said to be read from its start."""
    from modalmesh.router.pipeline import read_in_part
    from modalmesh.v1 import encoder_pb2

    assert read_in_part("x" * 3000, encoder_pb2.PooledFeatures(truncated=False, sequence_length=40)) == ""
    cut = encoder_pb2.PooledFeatures(truncated=True, sequence_length=256, characters_read=1161)
    assert read_in_part("x" * 3000, cut) == "read in part: the text model reads at most 256 tokens, its first 1,161 of 3,000 characters; the rest was not read"
    unsaid = encoder_pb2.PooledFeatures(truncated=True, sequence_length=256)
    assert read_in_part("x" * 3000, unsaid) == "read in part: the text model reads at most 256 tokens, its start; the rest was not read"
