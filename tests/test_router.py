"""The router over a real mesh on 127.0.0.1 (bundled encoders, untrained or shipped heads)."""

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from modalmesh.common import errors, telemetry
from modalmesh.common.client import EncoderClient, connect
from modalmesh.common.encoder import ENCODER_SERVICE, EncoderServicer
from modalmesh.text.server import TextService
from modalmesh.v1 import encoder_pb2_grpc, router_pb2, router_pb2_grpc
from tests.media import ct_dicom, image_bytes, phantom_hu, render_screenshot, wav_bytes

SCREENSHOT = image_bytes(render_screenshot("Error 402: Payment declined"))
VOICE = (Path(__file__).resolve().parent.parent / "examples" / "voice.wav").read_bytes()  # speech: a tone is not a voice message
INPUTS = {
    "text": {"text": "My card was declined at checkout."},
    "image": {"image": router_pb2.MediaInput(data=SCREENSHOT)},
    "audio": {"audio": router_pb2.MediaInput(data=VOICE)},
}
STATUS = router_pb2.ModalityStatus.Name


@pytest.fixture(scope="module")
def router(mesh):
    with connect(mesh.router.address) as channel:
        yield router_pb2_grpc.RouterStub(channel)


def analyze(stub, task="screenshot_triage", timeout=60, **fields):
    return stub.Analyze(router_pb2.AnalyzeRequest(task=task, **fields), timeout=timeout)


def reports(response):
    return {router_pb2.Modality.Name(r.modality).split("_")[1].lower(): r for r in response.explanation.modalities}


def test_list_tasks(router):
    tasks = {t.name: t for t in router.ListTasks(router_pb2.ListTasksRequest(), timeout=10).tasks}
    assert list(tasks["screenshot_triage"].labels) == ["payment", "login", "crash", "shipping", "refund", "other"]
    assert list(tasks["medical_report"].labels) == ["normal", "nodule", "mass"]
    assert all(t.model_version for t in tasks.values())
    # The shipped weights' routing (their config.json), as the router applies it.
    import json

    from modalmesh.router.tasks import SHIPPED_WEIGHTS

    for name, info in tasks.items():
        routing = json.loads((SHIPPED_WEIGHTS / name / "config.json").read_text())["routing"]
        assert (info.tau, info.gamma) == pytest.approx((routing["tau"], routing["gamma"]))
        assert [router_pb2.Modality.Name(m) for m in info.eager_side_outputs] == [f"MODALITY_{m.upper()}" for m in routing["eager"]]
    assert router_pb2.MODALITY_IMAGE in tasks["screenshot_triage"].eager_side_outputs  # OCR is waited for in most cases anyway
    # Both were trained on the bundled text model's features, and say so.
    from modalmesh.text.model import default_model_dir, model_version

    assert {t.text_model for t in tasks.values()} == {model_version(default_model_dir())}


@pytest.mark.parametrize("subset", [s for n in (1, 2, 3) for s in itertools.combinations(("text", "image", "audio"), n)])
def test_every_subset_of_modalities_gets_an_answer(router, subset):
    fields = {k: v for modality in subset for k, v in INPUTS[modality].items()}
    response = analyze(router, options=router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL), **fields)
    labels = ("payment", "login", "crash", "shipping", "refund", "other")
    # An answer, or one withheld as unsure.
    assert response.label in labels or (response.abstained and response.label == "uncertain" and response.abstain_reason)
    assert 0 < response.confidence <= 1 and 0 <= response.uncertainty.predictive_entropy <= 1
    by_modality = reports(response)
    for modality in ("text", "image", "audio"):
        expected = "MODALITY_STATUS_USED" if modality in subset else "MODALITY_STATUS_ABSENT"
        assert STATUS(by_modality[modality].status) == expected
        assert (by_modality[modality].gate_weight > 0) == (modality in subset)
    assert sum(r.gate_weight for r in by_modality.values()) == pytest.approx(1.0, abs=1e-5)
    assert response.top_k[0].label == response.label or response.abstained
    assert {"validate", "encode", "fuse", "heads", "total"} <= set(response.explanation.timings_ms)
    assert not response.explanation.attention  # attention weights only when asked to explain
    assert not response.explanation.screen_text  # nor the screen's text


def test_full_mode_reads_the_screen_and_reports_the_error_text(router):
    response = analyze(router, options=router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL, explain=True), **INPUTS["image"])
    findings = {f.key: f.value for f in response.findings}
    assert "Error 402: Payment declined" in findings["error_text"]
    assert 0.5 < float(findings["error_text_confidence"]) <= 1.0  # the status-line pointer's probability for that paragraph
    assert findings["priority"] in ("high", "normal", "low") and findings["next_steps"] and findings["reply"]
    assert reports(response)["image"].reason == "with OCR text"
    assert response.explanation.attention  # explain=True
    # What OCR read, where; the status message's lines marked.
    status = [line for line in response.explanation.screen_text if line.status_line]
    assert status and all(line.text in findings["error_text"] for line in status)
    assert all(len(line.box) == 4 and line.box[2] > line.box[0] for line in response.explanation.screen_text)
    assert len(response.explanation.screen_text) > len(status)  # the rest of the screen too
    for query in {a.query_modality for a in response.explanation.attention}:
        assert sum(a.mass for a in response.explanation.attention if a.query_modality == query) == pytest.approx(1.0, abs=1e-4)


def test_routing_skips_the_expensive_side_outputs_when_they_cannot_matter(mesh):
    # tau 0 and gamma 1: any answer is confident enough, nothing outstanding can matter;
    # no eager side outputs: OCR would be asked for after the image's features.
    hasty = mesh.start_router(routing="screenshot_triage=0.0/1.0/none")
    try:
        with connect(hasty.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            fields = {**INPUTS["text"], **INPUTS["image"]}
            routed = analyze(stub, **fields)
            full = analyze(stub, options=router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL), **fields)
            required = analyze(stub, options=router_pb2.AnalyzeOptions(require=[router_pb2.MODALITY_IMAGE]), **fields)
    finally:
        hasty.stop(grace=0.5)
    assert "OCR not requested" in reports(routed)["image"].reason or STATUS(reports(routed)["image"].status) == "MODALITY_STATUS_SKIPPED"
    assert reports(full)["image"].reason == "with OCR text"
    assert STATUS(reports(required)["image"].status) == "MODALITY_STATUS_USED"  # require forces the wait
    assert routed.explanation.timings_ms["total"] < full.explanation.timings_ms["total"]


def test_an_eager_side_output_comes_with_the_base_features(mesh):
    """routing 'eager': ROUTED asks for OCR in the image's own encoder call (the image's
    latency then includes it), not in a second call after every base feature is in."""
    fields = {**INPUTS["text"], **INPUTS["image"]}
    answers = {}
    for eager in ("image", "none"):
        router = mesh.start_router(routing=f"screenshot_triage=1.01/0.0/{eager}/none")  # tau 1.01: never answers early; no quick reading
        try:
            with connect(router.address) as channel:
                answers[eager] = analyze(router_pb2_grpc.RouterStub(channel), **fields)
        finally:
            router.stop(grace=0.5)
    for answer in answers.values():
        assert reports(answer)["image"].reason == "with OCR text"
        assert "Error 402: Payment declined" in {f.key: f.value for f in answer.findings}["error_text"]
    assert answers["image"].label == answers["none"].label
    assert answers["image"].confidence == pytest.approx(answers["none"].confidence, abs=1e-5)
    # One call: the image's answer waited for the OCR. Two calls: the image's features came first.
    with_ocr, alone = reports(answers["image"])["image"].latency_ms, reports(answers["none"])["image"].latency_ms
    assert with_ocr > alone, (with_ocr, alone)


def test_an_encoder_without_the_side_output_still_gives_its_features(mesh):
    """A vision service with OCR turned off refuses the "ocr" option (INVALID_ARGUMENT on
    header.options). An eager (ROUTED) or FULL request still gets the image's features,
    from a second call without the option, and the answer says why there is no OCR text."""
    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server
    from modalmesh.vision.server import VisionService

    config = load_config("vision", environ={}, port=0, metrics_port=0, ocr=False)
    blind = start_server(config, VisionService(config))
    router = mesh.start_router(vision_target=blind.address, routing="screenshot_triage=1.01/0.0/image")
    try:
        with connect(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            fields = {**INPUTS["text"], **INPUTS["image"]}
            answers = [analyze(stub, **fields), analyze(stub, options=router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL), **fields)]
    finally:
        router.stop(grace=0.5)
        blind.stop(grace=0.5)
    for answer in answers:
        image = reports(answer)["image"]
        assert STATUS(image.status) == "MODALITY_STATUS_USED" and image.gate_weight > 0
        assert image.reason.startswith("OCR failed: INVALID_ARGUMENT: header.options: OCR is turned off"), image.reason


def test_a_vision_service_refusing_the_quick_reading_gives_the_full_one(mesh):
    """A vision service that lists 'ocr_quick' but refuses it (another version behind the
    same address, say): ROUTED reads the screen at the full size instead, no failure said."""
    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server
    from modalmesh.vision.server import VisionService

    class WithoutQuick(VisionService):
        options = ("ocr", "lesions")  # what the header check accepts; Info still lists ocr_quick

    config = load_config("vision", environ={}, port=0, metrics_port=0)
    older = start_server(config, WithoutQuick(config))
    router = mesh.start_router(vision_target=older.address)
    try:
        with connect(router.address) as channel:
            answer = analyze(router_pb2_grpc.RouterStub(channel), **INPUTS["text"], **INPUTS["image"])
    finally:
        router.stop(grace=0.5)
        older.stop(grace=0.5)
    image = reports(answer)["image"]
    assert STATUS(image.status) == "MODALITY_STATUS_USED" and "failed" not in image.reason, image.reason
    assert "Error 402: Payment declined" in {f.key: f.value for f in answer.findings}["error_text"]


def test_a_stopped_encoder_gives_a_degraded_answer_with_the_reason(mesh):
    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server
    from modalmesh.vision.server import VisionService

    config = load_config("vision", environ={}, port=0, metrics_port=0, ocr=False)
    doomed = start_server(config, VisionService(config))
    router = mesh.start_router(vision_target=doomed.address)
    try:
        doomed.stop(grace=0.1)
        with connect(router.address) as channel:
            started = time.monotonic()
            full = router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL)  # the image is waited for, not skipped
            response = analyze(router_pb2_grpc.RouterStub(channel), timeout=10, options=full, **INPUTS["text"], **INPUTS["image"])
            assert time.monotonic() - started < 10
    finally:
        router.stop(grace=0.5)
    image = reports(response)["image"]
    assert STATUS(image.status) == "MODALITY_STATUS_FAILED" and image.error_code == "UNAVAILABLE" and image.reason
    assert image.gate_weight == 0
    assert STATUS(reports(response)["text"].status) == "MODALITY_STATUS_USED"
    assert reports(response)["text"].gate_weight == pytest.approx(1.0)


def test_an_exceeded_deadline_is_deadline_exceeded(router):
    with pytest.raises(grpc.RpcError) as raised:
        analyze(router, options=router_pb2.AnalyzeOptions(deadline_ms=2, mode=router_pb2.ROUTING_MODE_FULL), **INPUTS["image"])
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_grpc_deadline_gets_the_answer_from_the_encoders_that_made_it(router):
    """The router stops gathering a reply margin before the caller's gRPC deadline, so
    the caller gets the answer from what was encoded rather than a bare
    DEADLINE_EXCEEDED. Here the transcript of 25 s of speech (FULL mode waits
    for it) cannot be done in 1.5 s; the text can."""
    from modalmesh.audio.speech import espeak

    engine = espeak()
    said = " ".join(["My card was declined at checkout and I was charged twice for the same order."] * 5)
    noise = wav_bytes(engine.synthesize(said, "en-us", 150), engine.sample_rate)
    started = time.monotonic()
    response = analyze(
        router,
        timeout=1.5,
        text="My card was declined at checkout.",
        audio=router_pb2.MediaInput(data=noise),
        options=router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL),
    )
    assert time.monotonic() - started < 1.5
    assert STATUS(reports(response)["text"].status) == "MODALITY_STATUS_USED"
    assert STATUS(reports(response)["audio"].status) == "MODALITY_STATUS_TIMED_OUT"
    assert response.label


def test_a_cancelled_encoder_rpc_is_not_an_internal_error():
    """When the caller goes (its deadline passes), the router cancels the encoder RPCs; a
    work function then sees grpc.FutureCancelledError, which the harvest once let escape
    (logged as INTERNAL, counted in the error metrics and alerts)."""
    from concurrent import futures

    from modalmesh.router.pipeline import Deadline, Run

    def cancelled(call):
        raise grpc.FutureCancelledError()

    with futures.ThreadPoolExecutor(1) as pool:
        run = Run(encoders=None, pool=pool, deadline=Deadline.within(30))
        run.start("image", cancelled)
        run.calls["image"].future.exception(timeout=10)
        run.harvest()
    assert run.features == {} and run.pending == []


def test_a_client_cancel_cancels_the_encoder_calls(mesh, router):
    cancelled = telemetry.RPC_ERRORS.labels("vision", "EncodeOnce", "CANCELLED")
    before = cancelled._value.get()
    request = router_pb2.AnalyzeRequest(
        task="screenshot_triage",
        options=router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL),
        image=router_pb2.MediaInput(data=image_bytes(render_screenshot("Crash report", size=(1920, 1080)))),
    )
    call = router.Analyze.future(request, timeout=30)
    time.sleep(0.3)  # the vision call (features + OCR, about a second) is now running
    call.cancel()
    deadline = time.monotonic() + 10
    while cancelled._value.get() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled._value.get() > before  # seen by the vision service itself


def test_analyze_stream_sends_the_gate_before_the_final_answer(router):
    def requests():
        first = router_pb2.AnalyzeRequest(
            task="screenshot_triage",
            text="the app crashes when I open it",
            audio=router_pb2.MediaInput(media_type="audio/wav"),
            options=router_pb2.AnalyzeOptions(speech=True),
        )
        yield router_pb2.AnalyzeStreamRequest(request=first)
        for start in range(0, len(VOICE), 8000):
            yield router_pb2.AnalyzeStreamRequest(audio_chunk=VOICE[start : start + 8000])

    messages = list(router.AnalyzeStream(requests(), timeout=60))
    events = [e.WhichOneof("content") for e in messages]
    assert events.index("gate") < events.index("diagnosis") < events.index("final")
    assert events[-1] == "final" and "speech_chunk" in events
    gate = messages[events.index("gate")].gate
    assert sum(r.gate_weight for r in gate.modalities) == pytest.approx(1.0, abs=1e-5)


def test_medical_report_from_a_ct_and_a_record(router):
    response = analyze(
        router,
        task="medical_report",
        text="64-year-old smoker with a persistent cough.",
        image=router_pb2.MediaInput(data=_training_like_ct(), parameters={"window": "lung"}),
        options=router_pb2.AnalyzeOptions(speech=True),
    )
    findings = {f.key: f.value for f in response.findings}
    assert response.label in ("normal", "nodule", "mass", "uncertain")
    # The slice was measured in HU and holds no lesion: no size is claimed for one.
    assert findings["lesion_count"] == "0" and findings["side"] == "none" and "largest_diameter_mm" not in findings
    assert "Findings:" in response.description and "Impression:" in response.description
    assert "not for clinical use" in response.description.lower()
    assert "(pixel spacing 0." in response.description  # pixel spacing came through from the DICOM tags
    assert response.speech_wav.startswith(b"RIFF")


def test_medical_report_from_a_png_scan_with_its_window_is_measured(router):
    from modalmesh.data.ct import make_phantom, windowed_png
    from modalmesh.data.generate import PHANTOM_SIZE

    phantom = make_phantom(31, size=PHANTOM_SIZE, lesion_count=1, diameter_mm=36.0)
    image = router_pb2.MediaInput(
        data=windowed_png(phantom.hounsfield, -600, 1500),
        media_type="image/png",
        parameters={"pixel_spacing": f"{phantom.pixel_spacing_mm:.4f}", "window": "lung"},
    )
    response = analyze(router, task="medical_report", image=image)
    findings = {f.key: f.value for f in response.findings}
    assert float(findings["largest_diameter_mm"]) == pytest.approx(36.0, abs=1.0)
    assert findings["side"] == phantom.side and findings["lesion_count"] == "1"
    assert "measured on the slice in Hounsfield units" in response.description


def test_the_triage_reply_claims_nothing_done_and_names_no_problem_when_unsure():
    """The reply is said to the customer: it claims nothing the mesh has not done, and an
    unsure answer (a 0.35 "refund") makes no promise about a problem it may not have."""
    import json
    import re

    from modalmesh.router.tasks import BUILT_IN_FOLDER, TASKS, UNSURE_REPLY, Answer, Evidence

    replies = {label: about["reply"] for label, about in json.loads((BUILT_IN_FOLDER / "screenshot_triage.json").read_text())["labels"].items()}
    write = TASKS["screenshot_triage"].write

    def reply(label, confidence):
        return write(Answer(label, confidence, 0.5, {label: confidence}, {}), Evidence(text="help"))[2]

    assert reply("login", 0.9) == replies["login"] and reply("refund", 0.35) == UNSURE_REPLY
    for text in (*replies.values(), UNSURE_REPLY):
        assert not re.search(r"\b(we've|we have) (sent|checked|refunded|fixed|issued|cancelled)", text, re.I), text


def test_screen_text_read_or_used_in_part_is_said_in_the_answer(mesh, tmp_path):
    """A dense screen: the vision service reads its first ocr_max_lines lines and the router
    uses 32 paragraphs at most; both cuts were silent in the answer."""
    from PIL import Image, ImageDraw, ImageFont

    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server
    from modalmesh.vision.server import VisionService

    page = Image.new("RGB", (900, 2700), "white")
    draw, font = ImageDraw.Draw(page), ImageFont.load_default(size=22)
    for row in range(40):  # far apart: each line is a paragraph of its own
        draw.text((40, 30 + 66 * row), f"Order {row} was updated", fill="black", font=font)
    image = router_pb2.MediaInput(data=image_bytes(page), media_type="image/png")
    full = router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL)
    # A bare page of text is far from the app screens the shipped weights were trained on
    # (not applicable there): these routers serve the same weights without their reference set.
    import shutil

    from modalmesh.router.tasks import SHIPPED_WEIGHTS

    weights = tmp_path / "weights"
    shutil.copytree(SHIPPED_WEIGHTS / "screenshot_triage", weights / "screenshot_triage", ignore=shutil.ignore_patterns("applicability.*"))
    plain = mesh.start_router(weights_dir=str(weights))
    config = load_config("vision", environ={}, port=0, metrics_port=0, ocr_max_lines=5)
    capped = start_server(config, VisionService(config))
    router = mesh.start_router(vision_target=capped.address, weights_dir=str(weights))
    try:
        with connect(plain.address) as channel:
            assert (
                reports(analyze(router_pb2_grpc.RouterStub(channel), image=image, options=full))["image"].reason
                == "with OCR text (the first 32 of 40 paragraphs used)"
            )
        with connect(router.address) as channel:
            reason = reports(analyze(router_pb2_grpc.RouterStub(channel), image=image, options=full))["image"].reason
    finally:
        router.stop(grace=0.5)
        plain.stop(grace=0.5)
        capped.stop(grace=0.5)
    assert reason == "with OCR text (text left unread: the first 5 lines were read (ocr_max_lines))"


def test_medical_report_refuses_a_scan_that_is_not_ct(router):
    """pydicom's own MR file: it was answered "nodule" at 0.96 with an 11.3 mm lesion (an NM
    scan "mass" at 0.99), from densities that are not Hounsfield units."""
    from pydicom.data import get_testdata_file

    mr = router_pb2.MediaInput(data=Path(get_testdata_file("MR_small.dcm")).read_bytes())
    alone = analyze(router, task="medical_report", image=mr)
    assert alone.abstained and alone.label == "uncertain" and not alone.top_k
    image = reports(alone)["image"]
    assert STATUS(image.status) == "MODALITY_STATUS_NOT_APPLICABLE"
    assert image.reason == "the DICOM's Modality is MR; medical_report reads axial chest CT slices"
    assert "Modality is MR" in alone.abstain_reason and "lesion" not in alone.description
    # With a record: still no diagnosis, and the report says there was no scan.
    response = analyze(router, task="medical_report", text="64-year-old smoker with a cough.", image=mr)
    assert STATUS(reports(response)["image"].status) == "MODALITY_STATUS_NOT_APPLICABLE"
    assert response.abstained and response.label == "uncertain"
    findings = {f.key: f.value for f in response.findings}
    assert "lesion_count" not in findings and "Modality is MR" in findings["scan"]
    assert "no scan was read (not applicable: the DICOM's Modality is MR" in response.description
    # Nor is it a screenshot: the triage task finds it unlike anything it was trained on.
    assert STATUS(reports(analyze(router, image=mr))["image"].status) == "MODALITY_STATUS_NOT_APPLICABLE"


def test_medical_report_refuses_a_slice_that_is_not_axial(router):
    coronal = router_pb2.MediaInput(data=ct_dicom(phantom_hu(128), orientation=(1, 0, 0, 0, 0, -1)))
    response = analyze(router, task="medical_report", image=coronal)
    assert response.abstained and response.label == "uncertain"
    assert reports(response)["image"].reason == "the slice is coronal; medical_report reads axial chest CT slices"


def test_a_medical_report_without_a_scan_states_no_lesion_findings(router):
    """It wrote "1 round soft-tissue lesion in the left lung; the largest is 0.0 mm" (or, for
    normal, "the lung fields are clear") from the patient record alone."""
    response = analyze(router, task="medical_report", text="64-year-old smoker with a persistent cough.")
    findings = {f.key: f.value for f in response.findings}
    assert set(findings) == {"scan", "pretest_note", "reply"} and findings["scan"] == "not read: none was sent"
    # A record alone is not a diagnosis: the answer is withheld, the record's hint labelled as a pre-test note.
    assert response.abstained and response.label == "uncertain" and "record alone is not a diagnosis" in response.abstain_reason
    assert "from the record alone" in findings["pretest_note"] and "Diagnosis" not in response.description
    assert "no scan was read (none was sent)" in response.description
    assert "lesion" not in response.description.split("Impression:")[1]
    assert "lung fields are clear" not in response.description and " mm" not in response.description
    assert "not for clinical use" in response.description.lower()


@pytest.mark.parametrize(
    "fields, field, complaint",
    [
        ({"task": "horoscope", "text": "hi"}, "task", "unknown task 'horoscope'"),
        ({"task": "screenshot_triage"}, "text", "the request has no inputs"),
        # Invisible text is no text: nothing to answer from.
        ({"task": "screenshot_triage", "text": "\u200b\u200b \ufeff\u200e"}, "text", "the request has no inputs"),
        ({"task": "screenshot_triage", "text": "x" * 70000}, "text", "over the limit"),
        ({"task": "screenshot_triage", "image": router_pb2.MediaInput(data=b"not an image")}, "image.media_type", "match no supported format"),
        (
            {"task": "screenshot_triage", "text": "hi", "options": router_pb2.AnalyzeOptions(require=[router_pb2.MODALITY_AUDIO])},
            "options.require[0]",
            "not in the request",
        ),
        # An unknown mode is not run as another; an over-long id is neither logged nor traced.
        ({"task": "screenshot_triage", "text": "hi", "options": router_pb2.AnalyzeOptions(mode=99)}, "options.mode", "99 is not a RoutingMode"),
        ({"task": "screenshot_triage", "text": "hi", "request_id": "r" * 129}, "request_id", "longer than 128 characters"),
        # Refused by an encoder: when every input is refused, the router says INVALID_ARGUMENT
        # with the field of *its* request (not UNAVAILABLE, which invites a retry).
        ({"task": "screenshot_triage", "image": router_pb2.MediaInput(data=SCREENSHOT[: len(SCREENSHOT) // 2])}, "image.data", "cannot decode the image"),
        (
            {"task": "medical_report", "image": router_pb2.MediaInput(data=SCREENSHOT, parameters={"pixel_spacing": "-1"})},
            "image.parameters.pixel_spacing",
            "is not one or two spacings",
        ),
        (
            {"task": "screenshot_triage", "audio": router_pb2.MediaInput(data=b"RIFF" + b"\xff" * 500, media_type="audio/wav")},
            "audio.media_type",
            "not RIFF/WAVE",
        ),
    ],
)
def test_bad_requests_are_invalid_argument(router, fields, field, complaint):
    with pytest.raises(grpc.RpcError) as raised:
        router.Analyze(router_pb2.AnalyzeRequest(**fields), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in raised.value.details()
    assert errors.field_violations(raised.value)[0][0] == field
    assert analyze(router, **INPUTS["text"]).label  # still answering


def test_a_voice_message_is_told_by_its_bytes_and_a_refusal_is_in_the_callers_fields(router):
    """No media type given: an MP3 voice message is read as MP3 and heard; an M4A (AAC,
    which the audio service does not decode) is named as such, in the request's own field
    (`audio.media_type`, not the encoder's `header.media_type`). The M4A header is built
    by its specification: no M4A can be made on this machine."""
    import io

    import soundfile

    samples, rate = soundfile.read(io.BytesIO(VOICE), dtype="float32")
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="MP3")
    full = router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL)
    response = analyze(router, options=full, text="please help", audio=router_pb2.MediaInput(data=buffer.getvalue()))
    assert STATUS(reports(response)["audio"].status) == "MODALITY_STATUS_USED"
    assert "my payment failed at checkout" in response.description.lower()
    m4a = b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(range(256)) * 8
    response = analyze(router, options=full, text="please help", audio=router_pb2.MediaInput(data=m4a))
    audio = reports(response)["audio"]
    assert STATUS(audio.status) == "MODALITY_STATUS_FAILED"
    assert audio.reason.startswith("audio.media_type: 'audio/mp4' is not accepted by the audio encoder; use one of"), audio.reason
    with pytest.raises(grpc.RpcError) as raised:
        analyze(router, audio=router_pb2.MediaInput(data=m4a))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'audio/mp4' is not accepted" in raised.value.details()
    assert "use one of audio/wav, audio/flac, audio/ogg, audio/mpeg, audio/pcm" in raised.value.details()  # within the 120 characters kept
    assert errors.field_violations(raised.value)[0][0] == "audio.media_type"


def test_an_oversized_image_is_refused(mesh):
    small = mesh.start_router(max_input_bytes=1000)
    try:
        with connect(small.address) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                analyze(router_pb2_grpc.RouterStub(channel), **INPUTS["image"])
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "over the limit of 1000" in raised.value.details()
    finally:
        small.stop(grace=0.5)


def test_a_stalled_analyze_stream_is_deadline_exceeded_and_the_router_stays_up(mesh):
    # A client that stops sending without closing its stream (and sets no deadline)
    # must not hold a router worker for ever, before or during its audio.
    impatient = mesh.start_router(stream_idle_s=0.5)
    stall = threading.Event()

    def requests(audio_chunks):
        first = router_pb2.AnalyzeRequest(
            task="screenshot_triage",
            text="the app crashes when I open it",
            audio=router_pb2.MediaInput(media_type="audio/wav"),
            options=router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL),  # waits for the audio, however sure the text is
        )
        yield router_pb2.AnalyzeStreamRequest(request=first)
        for chunk in audio_chunks:
            yield router_pb2.AnalyzeStreamRequest(audio_chunk=chunk)
        stall.wait(30)

    try:
        with connect(impatient.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for audio_chunks in ([], [VOICE[:8000]]):  # stalled before the audio, and in the middle of it
                with pytest.raises(grpc.RpcError) as raised:
                    list(stub.AnalyzeStream(requests(audio_chunks)))  # no deadline
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "AnalyzeStream request stream: nothing arrived for 0.5 s" in raised.value.details()
            assert analyze(stub, **INPUTS["text"]).label  # still answering
    finally:
        stall.set()
        impatient.stop(grace=0.5)


TRITON_CLIENT = r"""
import sys
import numpy as np
import tritonclient.grpc as triton

client = triton.InferenceServerClient(sys.argv[1])
assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("screenshot_triage")
metadata = client.get_model_metadata("screenshot_triage")
assert [i.name for i in metadata.inputs] == ["TEXT", "IMAGE", "AUDIO"]
text = triton.InferInput("TEXT", [1], "BYTES")
text.set_data_from_numpy(np.array([b"My card was declined"], dtype=np.object_))
image = triton.InferInput("IMAGE", [1], "BYTES")
image.set_data_from_numpy(np.array([open(sys.argv[2], "rb").read()], dtype=np.object_))
result = client.infer("screenshot_triage", [text, image])
label = result.as_numpy("LABEL")[0].decode()
probs = result.as_numpy("PROBS")
gate = result.as_numpy("GATE")
assert label in ("payment", "login", "crash", "shipping", "refund", "other")
assert probs.shape == (6,) and abs(float(probs.sum()) - 1) < 1e-4
assert gate.shape == (3,) and abs(float(gate.sum()) - 1) < 1e-4 and gate[2] == 0
assert abs(float(result.as_numpy("CONFIDENCE")[0]) - float(probs.max())) < 1e-5
try:
    client.get_inference_statistics("screenshot_triage")
except triton.InferenceServerException as exc:
    assert "UNIMPLEMENTED" in str(exc.status()), exc.status()
else:
    raise AssertionError("a Triton-only extension answered")
try:
    client.get_model_repository_index()
except triton.InferenceServerException as exc:  # fixed weights: no repository to index
    assert "FAILED_PRECONDITION" in str(exc.status()) and "--model-repository" in exc.message(), exc
else:
    raise AssertionError("a router without a model repository indexed one")
print("ok", label)
"""


def test_tritonclient_can_call_the_router(mesh, tmp_path):
    """The unmodified tritonclient, in its own process (its generated code and ours both
    define package `inference`; one process cannot hold both)."""
    screenshot = tmp_path / "screen.png"
    screenshot.write_bytes(SCREENSHOT)
    result = subprocess.run([sys.executable, "-c", TRITON_CLIENT, mesh.router.address, str(screenshot)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ok ")


@pytest.mark.parametrize(
    "inputs, field, complaint",
    [
        # Two TEXT inputs: refused, not one silently replacing the other.
        ([("TEXT", [1], b"my card was declined"), ("TEXT", [1], b"where is my parcel")], "inputs[1].name", "TEXT is given twice"),
        # numpy's int64 product of this shape wraps to 1: the shape is checked without it.
        ([("TEXT", [274177, 67280421310721], b"my card was declined")], "inputs[0]", "one element"),  # 2**64 + 1
        ([("TEXT", [0], b"my card was declined")], "inputs[0]", "one element"),
    ],
)
def test_open_inference_protocol_refuses_ambiguous_inputs(mesh, inputs, field, complaint):
    from modalmesh.v1 import inference_pb2, inference_pb2_grpc

    request = inference_pb2.ModelInferRequest(model_name="screenshot_triage")
    for name, shape, value in inputs:
        tensor = request.inputs.add(name=name, datatype="BYTES", shape=shape)
        tensor.contents.bytes_contents.append(value)
    with connect(mesh.router.address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and complaint in raised.value.details()
    assert errors.field_violations(raised.value)[0][0] == field


def test_analyze_stream_passes_audio_on_while_it_arrives(router):
    """The audio encoder's Encode call is already running while the client still holds
    back its last audio chunk (seen on the audio service's in-flight gauge)."""
    audio_in_flight = telemetry.RPC_IN_FLIGHT.labels("audio", "Encode")
    voice = VOICE
    seen_running = []

    def requests():
        first = router_pb2.AnalyzeRequest(task="screenshot_triage", audio=router_pb2.MediaInput(media_type="audio/wav"))
        yield router_pb2.AnalyzeStreamRequest(request=first)
        chunks = [voice[i : i + 8000] for i in range(0, len(voice), 8000)]
        for chunk in chunks[:-1]:
            yield router_pb2.AnalyzeStreamRequest(audio_chunk=chunk)
        deadline = time.monotonic() + 10
        while audio_in_flight._value.get() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        seen_running.append(audio_in_flight._value.get() >= 1)
        yield router_pb2.AnalyzeStreamRequest(audio_chunk=chunks[-1])

    events = list(router.AnalyzeStream(requests(), timeout=60))
    assert seen_running == [True]
    final = events[-1].final
    assert STATUS(reports(final)["audio"].status) == "MODALITY_STATUS_USED"
    assert final.explanation.modalities  # a complete answer


def test_streamed_audio_to_a_service_without_transcripts_is_still_used(mesh):
    """FULL mode asks for the transcript with the audio's features; a stream cannot be sent
    twice, so the router checks the audio service's Info first and leaves the option out
    when it is not offered (transcripts turned off there)."""
    from modalmesh.audio.server import AudioService
    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server

    config = load_config("audio", environ={}, port=0, metrics_port=0, transcript=False)
    deaf = start_server(config, AudioService(config))
    router = mesh.start_router(audio_target=deaf.address)
    voice = VOICE

    def requests():
        first = router_pb2.AnalyzeRequest(
            task="screenshot_triage",
            text="Please help.",
            audio=router_pb2.MediaInput(media_type="audio/wav"),
            options=router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL),
        )
        yield router_pb2.AnalyzeStreamRequest(request=first)
        for i in range(0, len(voice), 8000):
            yield router_pb2.AnalyzeStreamRequest(audio_chunk=voice[i : i + 8000])

    try:
        with connect(router.address) as channel:
            final = list(router_pb2_grpc.RouterStub(channel).AnalyzeStream(requests(), timeout=60))[-1].final
    finally:
        router.stop(grace=0.5)
        deaf.stop(grace=0.5)
    audio = reports(final)["audio"]
    assert STATUS(audio.status) == "MODALITY_STATUS_USED" and audio.gate_weight > 0
    assert audio.reason == "transcript not offered by the audio service"


def test_analyze_stream_refuses_image_chunks_after_audio(router):
    def requests():
        first = router_pb2.AnalyzeRequest(task="screenshot_triage", audio=router_pb2.MediaInput(media_type="audio/wav"))
        yield router_pb2.AnalyzeStreamRequest(request=first)
        yield router_pb2.AnalyzeStreamRequest(audio_chunk=VOICE[:8000])
        yield router_pb2.AnalyzeStreamRequest(image_chunk=SCREENSHOT[:100])

    with pytest.raises(grpc.RpcError) as raised:
        list(router.AnalyzeStream(requests(), timeout=60))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_analyze_stream_refuses_an_image_both_in_the_request_and_as_chunks(router):
    # Chunks are not appended to an image already given: the request is refused.
    first = router_pb2.AnalyzeRequest(task="screenshot_triage", image=router_pb2.MediaInput(data=SCREENSHOT))
    messages = [router_pb2.AnalyzeStreamRequest(request=first), router_pb2.AnalyzeStreamRequest(image_chunk=SCREENSHOT)]
    with pytest.raises(grpc.RpcError) as raised:
        list(router.AnalyzeStream(iter(messages), timeout=60))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.field_violations(raised.value)[0][0] == "request.image.data"


def test_a_result_that_arrives_after_a_harvest_looked_is_still_gathered():
    """The gather loop harvests, then asks what is pending. A call that finishes in
    between is done yet not harvested: it stays pending until a harvest takes its result
    (else its OCR or transcript would be missing from the answer unsaid)."""
    import threading
    from concurrent import futures

    import torch

    from modalmesh.router.pipeline import Deadline, Produced, Run

    release = threading.Event()

    def work(call):
        release.wait(10)
        return Produced({"image_text": torch.ones(2, 384)})

    with futures.ThreadPoolExecutor(2) as pool:
        run = Run(encoders=None, pool=pool, deadline=Deadline.within(30))
        run.start("image_text", work)
        run.harvest()  # looked while the call was still running
        release.set()
        run.calls["image_text"].future.result(timeout=10)  # finished after the look
        assert [c.source for c in run.pending] == ["image_text"]
        assert run.wait_any()
        run.harvest()
        assert run.pending == [] and "image_text" in run.features
        assert "image_text" not in run.side_notes


def test_features_with_nan_fail_their_modality_instead_of_reaching_the_answer():
    """The real encoders refuse NaN input and clip float audio to full scale; should any
    encoder still send non-finite features,
    its modality fails with the reason and the answer comes from the rest. The work
    function stands in for such an encoder: none of the real ones can be made to do it."""
    from concurrent import futures

    import torch

    from modalmesh.router.pipeline import Deadline, Produced, Run

    with futures.ThreadPoolExecutor(2) as pool:
        run = Run(encoders=None, pool=pool, deadline=Deadline.within(30))
        run.start("audio", lambda call: Produced({"audio": torch.full((5, 80), float("nan"))}))
        run.start("text", lambda call: Produced({"text": torch.ones(3, 384)}, {"text": "hello"}))
        while run.pending:
            run.wait_any()
            run.harvest()
    assert set(run.features) == {"text"} and run.evidence.text == "hello"  # merged by the gathering thread
    state = run.states["audio"]
    assert state.status == router_pb2.MODALITY_STATUS_FAILED and state.error_code == "INTERNAL"
    assert "NaN or infinite" in state.reason


def _screen_lines_answer(task, lines, message=""):
    """The router's answer to a screen of `lines` (MiniLM vectors), the customer's `message`
    if any, and an audio held back, decided by `Pipeline` itself; (the answer, its
    error_text, the vectors, whether the paragraphs were scored (without a status-line
    pointer) or the status paragraph picked (with one) while the audio was still
    outstanding, the evidence)."""
    import threading
    from concurrent import futures

    import torch

    from modalmesh.router.pipeline import Deadline, Pipeline, Produced, Run
    from modalmesh.text.model import TextEncoder

    vectors = torch.stack([torch.as_tensor(r.pooled, dtype=torch.float32) for r in TextEncoder("").encode_batch(lines)])
    pipeline = Pipeline({task.spec.name: task}, encoders=None, run_model=lambda f: f(), default_deadline_s=30, max_input_bytes=1 << 20)
    scored_while_waiting = threading.Event()

    def image(call):
        return Produced({"image": torch.zeros(49, 1280), "image_text": vectors}, {"screen_lines": lines})

    def audio(call):
        deadline = time.monotonic() + 10
        while run.line_log_odds is None and run.status_index is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if run.line_log_odds is not None or run.status_index is not None:
            scored_while_waiting.set()
        return Produced({"audio": torch.zeros(50, 80)})

    with futures.ThreadPoolExecutor(2) as pool:
        run = Run(encoders=None, pool=pool, deadline=Deadline.within(30), widths=task.model.config.input_widths)
        run.start("image", image)
        run.start("audio", audio)
        if message:
            tokens = torch.as_tensor(TextEncoder("").encode_batch([message])[0].tokens, dtype=torch.float32)
            run.start("text", lambda call: Produced({"text": tokens}, {"text": message}))
        assert pipeline.gather(run, task, media={}, full=True, required=set(), side_now=set()) is None
    decision = pipeline.decide(task, run, outstanding=())
    response = pipeline.respond(router_pb2.AnalyzeRequest(task=task.spec.name), task, run, decision)
    return response, {f.key: f.value for f in response.findings}["error_text"], vectors, scored_while_waiting.is_set(), run.evidence


SCREEN = ["ShopFast", "Home Orders Account Help", "Incorrect password", "OK"]


def test_the_status_line_pointer_picks_the_error_text_and_the_answer_reads_it():
    from modalmesh.router.tasks import SHIPPED_WEIGHTS
    from modalmesh.router.tasks import TASKS, load_task

    task = load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS))
    assert task.status_line is not None  # the shipped weights carry one
    response, error_text, vectors, _, _ = _screen_lines_answer(task, SCREEN)
    assert response.label == "login" and error_text == "Incorrect password" == SCREEN[task.status_line.pick(vectors)]


MAIL = ["Inbox 12 Starred Sent Drafts 2 Promotions Spam", "Good morning Jordan,", "We could not take payment for this order", "Kind regards"]


def test_an_error_text_picked_from_furniture_unlike_any_training_message_is_withheld():
    """A mail client's folder list is unlike every status message of the training screens.
    On an e-mail whose body holds no status message the pointer, scoring each paragraph
    alone, prefers the folder list to the thank-you note. The router states no status
    message then, and says why."""
    import dataclasses

    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, Answer, load_task

    task = load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS))
    # A status message in words no training screen has: picked over the folder list.
    _, error_text, vectors, _, _ = _screen_lines_answer(task, MAIL, message="My card payment failed twice at checkout")
    assert task.status_line.pick(vectors) == 2 and error_text == MAIL[2]
    thanks = [MAIL[0], MAIL[1], "Thank you for your order", MAIL[3]]
    response, error_text, vectors, picked_while_waiting, evidence = _screen_lines_answer(task, thanks, message="My card payment failed twice at checkout")
    assert picked_while_waiting  # the pick and its check run as soon as the screen text is in, not after the decision
    assert task.status_line.pick(vectors) == 0  # the folder list
    assert evidence.key_line == "" and evidence.key_line_chance is None
    assert "('Inbox 12 Starred Sent Drafts 2 Promotions Spam') is unlike every status message" in evidence.key_line_unstated
    assert error_text == "" and "Inbox" not in response.description
    # Given an answer, the writer states no error_text (nor lines with error words instead) and says why.
    assert task.spec.write is not None
    given = dataclasses.replace(evidence, withheld="")  # this answer itself is withheld (unsure); as if it were given
    description, findings, _ = task.spec.write(Answer("payment", 0.97, 0.1, {}, {}), given)
    assert findings["error_text"] == "" and findings["error_text_withheld"] == evidence.key_line_unstated and "error_text_confidence" not in findings
    assert "The screen shows" not in description
    # A familiar status message on the same screen is stated, with no such note.
    familiar = [MAIL[0], MAIL[1], "Your card was declined. Try another card", MAIL[3]]
    response, error_text, _, _, evidence = _screen_lines_answer(task, familiar, message="I can't pay, my card was declined")
    findings = {f.key: f.value for f in response.findings}
    assert error_text == familiar[2] and evidence.key_line_unstated == "" and "error_text_withheld" not in findings
    assert float(findings["error_text_confidence"]) > 0.5


DECLINED = ["ShopFast", "Home Orders Account Help", "Your card was declined. Try another card", "OK"]


def test_an_answer_withheld_as_unsure_still_states_the_status_message_it_read():
    """A declined card on the screen and a message about a parcel: which problem it is is
    unsure (withheld), but the screen's message was read, surely; the answer states it,
    with how sure the pointer is, for the person who looks. Not where the pointer was less
    sure of it (status_line.READ_SURELY), not with a best guess of `other` (no problem: no
    error), not with a message out of the task's scope."""
    import dataclasses

    from modalmesh.router import scope
    from modalmesh.router.status_line import READ_SURELY
    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, Answer, load_task, states_error_text

    task = load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS))
    response, error_text, _, _, evidence = _screen_lines_answer(task, DECLINED, message="my parcel never arrived")
    findings = {f.key: f.value for f in response.findings}
    assert response.label == "uncertain" and evidence.withheld.startswith("confidence ")
    assert error_text == DECLINED[2] and float(findings["error_text_confidence"]) > 0.9
    assert response.description.startswith("Not classified: ") and f'The screen shows "{DECLINED[2]}"' in response.description
    # What would resolve it is not a screenshot: that was read.
    assert evidence.withheld.endswith("; a message saying what went wrong (the screenshot's status message was read) would help")
    thrice = [DECLINED[0], DECLINED[2], DECLINED[2], DECLINED[2]]  # the pointer a third sure of each copy
    unsure, _, _, _, unsure_evidence = _screen_lines_answer(task, thrice, message="my parcel never arrived")
    assert unsure.label == "uncertain" and unsure_evidence.withheld.endswith(f"; {task.spec.resolve} would help")
    assert findings["next_steps"] == task.spec.write(Answer("other", 0.9, 0.1, {}, {}), dataclasses.replace(evidence, withheld=""))[1]["next_steps"]
    assert task.spec.write is not None
    assert evidence.key_line_chance is not None and evidence.key_line_chance >= READ_SURELY
    unsure_pick = READ_SURELY - 0.05  # stated with a given answer (>= STATED_FROM), not with a withheld one
    for label, withheld, chance in (
        ("payment", evidence.withheld, unsure_pick),
        ("other", evidence.withheld, evidence.key_line_chance),
        ("payment", scope.REASON + " (the message is about opening hours)", evidence.key_line_chance),
    ):
        assert not states_error_text(label, withheld, chance) and states_error_text("payment", "", chance)
        unsure = dataclasses.replace(evidence, withheld=withheld, key_line_chance=chance)
        description, findings, _ = task.spec.write(Answer(label, 0.5, 0.6, {}, {}), unsure)
        assert findings["error_text"] == "" and "error_text_confidence" not in findings and "The screen shows" not in description


# A held-out e-mail (data/triage-heldout), its OCR paragraphs: the status message is the sixth.
QUICKBUY_MAIL = [
    "Mail",
    "QuickBuy Order updates <no-reply@quickbuy.com>",
    "Inbox 12 Starred Sent Drafts 2 Promotions Spam",
    "A message about your QuickBuy account",
    "Dear customer,",
    "Estimated delivery: unknown.",
    "Try again, or reach us any time via live chat.",
    "If you have any questions, just reply to this email.",
    "The QuickBuy team",
]


def test_an_error_text_the_pointer_is_unsure_of_is_withheld():
    """On this e-mail the pointer likes the sender line best, but gives it less than even
    odds of being the status message: the router states no error_text and says why."""
    from modalmesh.router import status_line
    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, load_task

    task = load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS))
    response, error_text, vectors, _, evidence = _screen_lines_answer(task, QUICKBUY_MAIL, message="Where is my parcel? The delivery date is unknown")
    chances = task.status_line.probabilities(vectors)
    picked = int(chances.argmax())
    assert picked == 1 and float(chances[picked]) < status_line.STATED_FROM  # the sender line, unsure
    assert task.status_line.unfamiliar(vectors[picked]) is None  # not withheld for being unlike the training messages
    assert error_text == "" and evidence.key_line == "" and evidence.key_line_chance is None
    assert evidence.key_line_unstated.startswith("no paragraph is more likely than not the status message (the likeliest, 'QuickBuy Order")
    assert "QuickBuy Order updates" not in response.description
    # A screen where the pointer is sure states its pick.
    sure = [QUICKBUY_MAIL[0], QUICKBUY_MAIL[4], "Your parcel is delayed at the depot", QUICKBUY_MAIL[8]]
    _, error_text, vectors, _, evidence = _screen_lines_answer(task, sure, message="Where is my parcel?")
    assert error_text == sure[2] and evidence.key_line_unstated == "" and float(task.status_line.probabilities(vectors).max()) >= status_line.STATED_FROM


def test_without_a_pointer_screen_lines_are_scored_while_other_encoders_still_work():
    """For weights without a status-line pointer, error_text is the OCR paragraph that alone
    most favours the answer. Scoring the paragraphs is a model pass of its own; it runs as
    soon as the screen text is in, while the router still waits for a slower encoder (here
    the audio, held until the scores exist), not after the last answer."""
    import dataclasses

    from modalmesh.router.tasks import SHIPPED_WEIGHTS
    from modalmesh.router.tasks import TASKS, key_screen_line, load_task

    task = dataclasses.replace(load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS)), status_line=None)
    response, error_text, vectors, scored_while_waiting, _ = _screen_lines_answer(task, SCREEN)
    assert scored_while_waiting
    label = response.top_k[0].label  # the best guess, also where the answer is withheld
    key = key_screen_line(task.model, vectors, task.spec.labels.index(label))
    assert error_text == ("" if label == "other" or key is None else SCREEN[key])  # no problem found: no error text


def test_in_full_mode_a_modality_is_read_alone_while_other_encoders_still_work():
    """The dissent check reads each modality alone (tasks.decide). In FULL mode the router
    reads a modality whose inputs are all in on its second model thread while it still
    waits for a slower encoder (here the audio, held until the image's reading is kept),
    and the decision at the end is the one the evaluation computes."""
    import threading
    from concurrent import futures

    import torch

    from modalmesh.router.pipeline import Deadline, Pipeline, Produced, Run
    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, decide, load_task
    from modalmesh.text.model import TextEncoder

    task = load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS))
    vectors = torch.stack([torch.as_tensor(r.pooled, dtype=torch.float32) for r in TextEncoder("").encode_batch(SCREEN)])
    generator = torch.Generator().manual_seed(3)
    image_features = {"image": torch.randn(49, 1280, generator=generator), "image_text": vectors}
    read_while_waiting = threading.Event()
    with futures.ThreadPoolExecutor(1) as beside, futures.ThreadPoolExecutor(2) as pool:
        pipeline = Pipeline(
            {task.spec.name: task},
            encoders=None,
            run_model=lambda f: f(),
            default_deadline_s=30,
            max_input_bytes=1 << 20,
            run_beside=lambda work: beside.submit(work).result,
        )

        def audio(call):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not run.alone.done("image"):
                time.sleep(0.01)
            if run.alone.done("image"):
                read_while_waiting.set()
            return Produced({"audio": torch.randn(50, 80, generator=torch.Generator().manual_seed(4))})

        run = Run(encoders=None, pool=pool, deadline=Deadline.within(30), widths=task.model.config.input_widths)
        run.start("image", lambda call: Produced(dict(image_features), {"screen_lines": SCREEN}))
        run.start("audio", audio)
        assert pipeline.gather(run, task, media={}, full=True, required=set(), side_now=set()) is None
        decision = pipeline.decide(task, run, outstanding=())
    assert read_while_waiting.is_set()
    offline = decide(task.model, task.spec, dict(run.features), dict(run.evidence.image_tags), pointer=task.status_line, attention=False)
    assert decision.dissent == offline.dissent
    assert decision.answer.confidence == pytest.approx(float(offline.probabilities.max()), abs=1e-6)


class TextServiceWithoutEncodeBatch(TextService):
    """The real text service as one older than EncodeBatch serves it: UNIMPLEMENTED."""

    def register(self, server):
        class Older(EncoderServicer):
            EncodeBatch = encoder_pb2_grpc.EncoderServicer.EncodeBatch

        encoder_pb2_grpc.add_EncoderServicer_to_server(Older(self), server)
        return [ENCODER_SERVICE]


@pytest.mark.parametrize("batches", [True, False], ids=["one EncodeBatch call", "a text service without EncodeBatch"])
def test_screen_lines_are_embedded_each_as_alone_and_never_wait_on_their_own_pool(start_text_service, batches):
    """A source's work (the image's, after OCR) embeds its text lines: in one EncodeBatch
    call, or, from a text service without it, one concurrent call per line on a pool of
    their own (calls on the fan-out pool the work itself runs on could never run once every
    worker waits like that; here that pool has a single worker). Either way each line's
    vector is the one it gets alone."""
    from concurrent import futures

    import torch

    from modalmesh.router.pipeline import Deadline, Encoders, Run

    handle = start_text_service(service_class=TextService if batches else TextServiceWithoutEncodeBatch)
    texts = ["Payment declined", "Try another card", "Order #4411"]
    with connect(handle.address) as channel:
        alone = [EncoderClient(channel).encode_text(text, pooled_only=True).pooled for text in texts]
        encoders = Encoders(channel, channel, channel)
        fan_out = futures.ThreadPoolExecutor(1)
        lines = futures.ThreadPoolExecutor(4)
        try:
            for _ in range(2):  # the second time knows whether the service batches
                run = Run(encoders, fan_out, Deadline.within(20), lines)
                run.start("image_text", lambda call: {"image_text": run.embed_texts(call, texts)})
                vectors = run.calls["image_text"].future.result(timeout=15)["image_text"]
                assert tuple(vectors.shape) == (3, 32)
                for row, expected in zip(vectors, alone):
                    assert torch.allclose(row, torch.from_numpy(expected.astype("float32")), atol=2e-3)
        finally:
            fan_out.shutdown(wait=False, cancel_futures=True)
            lines.shutdown(wait=False, cancel_futures=True)
    assert encoders.batches("text") is batches


def test_concurrent_requests_each_get_the_answer_they_get_alone(router):
    """Twelve callers at once (OCR, paragraphs embedded, fusion on the model thread), each
    with its own screen: every answer is complete and equal to that request's answer alone.
    FULL mode: in ROUTED mode which encoder answers first may change under load, and with
    it what an early answer is read from (by design)."""
    from concurrent import futures

    screens = ["Error 402: Payment declined", "Incorrect password", "The app has stopped", "Delivery delayed"]
    full = router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL)
    requests = [{"text": "Please help.", "image": router_pb2.MediaInput(data=image_bytes(render_screenshot(screen))), "options": full} for screen in screens]
    alone = [analyze(router, **fields) for fields in requests]
    # Each alone again: the same answers, and at least 8 calls answered, so the router is past
    # its cold start (cold_start_calls 8), which refuses calls past 8 at once with a deadline.
    again = [analyze(router, **fields) for fields in requests]
    assert [a.label for a in again] == [a.label for a in alone]
    assert [a.confidence for a in again] == pytest.approx([a.confidence for a in alone], abs=1e-4)
    with futures.ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda i: analyze(router, **requests[i % 4]), range(12)))
    for index, answer in enumerate(together):
        expected = alone[index % 4]
        assert answer.label == expected.label and answer.confidence == pytest.approx(expected.confidence, abs=1e-4)
        findings = {f.key: f.value for f in answer.findings}
        assert screens[index % 4] in findings["error_text"]
        assert reports(answer)["image"].reason == "with OCR text"


def _training_like_ct() -> bytes:
    """A CT slice as the medical task's data generator makes them (a toy phantom is unlike
    them, and not applicable)."""
    from modalmesh.data.ct import make_phantom, write_ct_dicom
    from modalmesh.data.generate import PHANTOM_SIZE

    phantom = make_phantom(77, size=PHANTOM_SIZE, lesion_count=0)
    return write_ct_dicom(phantom.hounsfield, (phantom.pixel_spacing_mm,) * 2, uid_seed="router-tests")


def test_the_reply_margin_grows_when_answers_have_been_slow_to_finish():
    from modalmesh.router.pipeline import MAX_REPLY_MARGIN_S, MIN_REPLY_MARGIN_S, Pipeline

    pipeline = Pipeline({}, None, None, default_deadline_s=30.0, max_input_bytes=1024)
    assert pipeline.reply_margin(20.0) == MAX_REPLY_MARGIN_S  # nothing answered yet: the fixed margin
    assert pipeline.reply_margin(0.1) == MIN_REPLY_MARGIN_S
    pipeline.finish_s.extend([0.02] * 60)
    assert pipeline.reply_margin(20.0) == MAX_REPLY_MARGIN_S  # an idle router finishes in milliseconds
    pipeline.finish_s.extend([0.5] * 64)  # calls queued for the model thread: finishing took half a second
    assert pipeline.reply_margin(20.0) == pytest.approx(1.0)
    assert pipeline.reply_margin(4.0) == pytest.approx(0.4)  # never more than a tenth of the time left


def test_routed_mode_waits_for_the_rest_where_the_early_answer_would_be_withheld(mesh, tmp_path):
    """ROUTED answers before every input is in only where that answer would be given. Here
    the screenshot's answer comes first (OCR is quicker than the 20 s voice message's
    transcript) and routing would take it (tau 0.5, gamma 1.01); with the shipped weights
    it does and skips the voice message. With a screenshot-alone threshold no answer
    reaches (abstain_below_alone 0.999), that early answer would be withheld, so the router
    waits for the voice message and answers from both."""
    import json
    import shutil

    from modalmesh.audio.speech import espeak
    from modalmesh.router.tasks import SHIPPED_WEIGHTS

    engine = espeak()
    said = " ".join(["My card was declined at checkout and I was charged twice."] * 5)
    voice = router_pb2.MediaInput(data=wav_bytes(engine.synthesize(said, "en-us", 150), engine.sample_rate))
    strict = tmp_path / "screenshot_triage"
    shutil.copytree(SHIPPED_WEIGHTS / "screenshot_triage", strict)
    config = json.loads((strict / "config.json").read_text())
    config["abstain_below_alone"] = {"image": 0.999}
    (strict / "config.json").write_text(json.dumps(config))
    routing = "screenshot_triage=0.5/1.01/image+audio"
    answers = {}
    for name, weights in (("shipped", str(SHIPPED_WEIGHTS)), ("strict", str(tmp_path))):
        router = mesh.start_router(weights_dir=weights, routing=routing)
        try:
            with connect(router.address) as channel:
                stub = router_pb2_grpc.RouterStub(channel)
                answers[name] = analyze(stub, image=router_pb2.MediaInput(data=SCREENSHOT), audio=voice)
        finally:
            router.stop(grace=0.5)
    shipped, strict_answer = answers["shipped"], answers["strict"]
    assert STATUS(reports(shipped)["audio"].status) == "MODALITY_STATUS_SKIPPED" and not shipped.abstained  # the early answer
    assert STATUS(reports(strict_answer)["audio"].status) == "MODALITY_STATUS_USED"
    assert "image alone" not in strict_answer.abstain_reason and strict_answer.label == shipped.label


def test_routed_mode_answers_from_the_quick_reading_of_a_clear_screen(mesh):
    """The shipped routing reads the screen text quickly first (TaskSpec.quick: detection at
    the vision service's quick size); on a clear screen the answer and its status message
    are sure, so the screen is not read again: the same answer and error_text as FULL."""
    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, load_task

    assert load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS)).spec.quick == ("image",)
    fields = {**INPUTS["text"], **INPUTS["image"]}
    with connect(mesh.router.address) as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        info = {t.name: t for t in stub.ListTasks(router_pb2.ListTasksRequest(), timeout=10).tasks}["screenshot_triage"]
        routed = analyze(stub, **fields)
        full = analyze(stub, options=router_pb2.AnalyzeOptions(mode=router_pb2.ROUTING_MODE_FULL), **fields)
    assert list(info.quick_side_outputs) == [router_pb2.MODALITY_IMAGE]
    assert "OCR read at the quick detection size" in reports(routed)["image"].reason
    assert reports(full)["image"].reason == "with OCR text"
    assert routed.label == full.label and not routed.abstained
    error_texts = [{f.key: f.value for f in answer.findings}["error_text"] for answer in (routed, full)]
    assert all("Error 402: Payment declined" in text for text in error_texts), error_texts


def test_a_quick_reading_that_does_not_hold_is_replaced_by_the_full_one():
    """Where the quick reading's status message is unlike every training status message
    (a mail client's folder list), the router reads the screen again at the full size and
    answers from that reading alone: its paragraphs, its status message. The encoders are
    stand-ins returning MiniLM vectors of given lines (the real calls are in the mesh tests)."""
    from concurrent import futures

    import torch

    from modalmesh.router.pipeline import Deadline, Pipeline, Produced, Run
    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, load_task
    from modalmesh.text.model import TextEncoder

    task = load_task(TASKS["screenshot_triage"], str(SHIPPED_WEIGHTS))
    full_lines = [MAIL[1], "Your card was declined. Try another card", MAIL[3]]

    def vectors(lines):
        return torch.stack([torch.as_tensor(r.pooled, dtype=torch.float32) for r in TextEncoder("").encode_batch(lines)])

    message = "I can't pay, my card was declined"
    tokens = torch.as_tensor(TextEncoder("").encode_batch([message])[0].tokens, dtype=torch.float32)
    pipeline = Pipeline({task.spec.name: task}, encoders=None, run_model=lambda f: f(), default_deadline_s=30, max_input_bytes=1 << 20)
    asked_again = []

    def read_again(run, modality, data, media_type, parameters):
        asked_again.append(modality)
        return lambda call: Produced({"image_text": vectors(full_lines)}, {"screen_lines": full_lines})

    pipeline._side_work = read_again  # the second vision call: the full-size reading
    with futures.ThreadPoolExecutor(2) as pool:
        run = Run(encoders=None, pool=pool, deadline=Deadline.within(30), widths=task.model.config.input_widths)
        run.quick = {"image"}
        run.start("image", lambda call: Produced({"image": torch.zeros(49, 1280), "image_text": vectors(MAIL[:1])}, {"screen_lines": MAIL[:1]}))
        run.start("text", lambda call: Produced({"text": tokens}, {"text": message}))
        run.states["image"].status = run.states["text"].status = router_pb2.MODALITY_STATUS_UNSPECIFIED
        early = pipeline.gather(run, task, media={"image": (b"png", "image/png", {})}, full=False, required=set(), side_now={"image"})
    assert asked_again == ["image"] and early is None  # not answered from the quick reading
    assert run.evidence.screen_lines == full_lines and run.features["image_text"].shape[0] == len(full_lines)
    assert "image_text" not in run.side_notes
    decision = pipeline.decide(task, run, outstanding=())
    response = pipeline.respond(router_pb2.AnalyzeRequest(task=task.spec.name), task, run, decision)
    assert {f.key: f.value for f in response.findings}["error_text"] == full_lines[1]


def test_choosing_the_quick_reading_never_waits_on_the_encoders_info():
    """Whether to ask for 'ocr_quick' comes from the vision service's last Info, read in the
    background: a request never waits on Info (an encoder hung there would hold each one)."""
    import threading
    from concurrent import futures

    import grpc

    from modalmesh.router.pipeline import Encoders
    from modalmesh.v1 import encoder_pb2, encoder_pb2_grpc

    asked, release = threading.Event(), threading.Event()

    class SlowInfo(encoder_pb2_grpc.EncoderServicer):
        def Info(self, request, context):
            asked.set()
            release.wait(10)
            return encoder_pb2.EncoderInfo(options=["ocr", "lesions"])

    server = grpc.server(futures.ThreadPoolExecutor(2))
    encoder_pb2_grpc.add_EncoderServicer_to_server(SlowInfo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        encoders = Encoders(channel, channel, channel)
        assert encoders.may_offer("image", "ocr_quick")  # nothing known yet: asked for; a refusal falls back to 'ocr'
        assert asked.wait(10) and not release.is_set()  # Info is being read, unanswered, and the request went on
        release.set()
        for _ in range(200):  # the background read lands (bounded wait)
            if "image" in encoders._options:
                break
            time.sleep(0.05)
        assert "image" in encoders._options  # read in the background after the request went on
        assert not encoders.may_offer("image", "ocr_quick") and encoders.may_offer("image", "ocr")
    finally:
        channel.close()
        server.stop(0)


def test_a_router_set_to_float32_answers_as_the_default_one(mesh):
    """`fusion_precision`: the mesh's router runs at its default (auto: bfloat16 where the
    CPU multiplies it natively); one set to float32 loads the triage ensemble so, and both
    answer a screenshot and message alike (label, confidence within 0.01)."""
    from modalmesh.client import RouterClient
    from modalmesh.router.fusion import fusion_precision
    from tests.media import image_bytes, render_screenshot

    exact = mesh.start_router(fusion_precision="float32")
    try:
        assert exact.service.tasks["screenshot_triage"].model.precision == "float32"
        assert mesh.router.service.tasks["screenshot_triage"].model.precision == fusion_precision("auto")
        screenshot = image_bytes(render_screenshot("Error 402: Payment declined"))
        answers = []
        for router in (exact, mesh.router):
            with RouterClient(router.address, timeout=60) as client:
                answers.append(client.analyze("screenshot_triage", image=screenshot, text="I was charged twice", mode="full"))
    finally:
        exact.stop(grace=0.5)
    (reference, default) = answers
    assert default["label"] == reference["label"] == "payment"
    assert abs(default["confidence"] - reference["confidence"]) <= 0.01
