"""The vision service over gRPC: the bundled EfficientNet-Lite0, OCR, DICOM, other backbones."""

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from modalmesh.common import errors
from modalmesh.common.client import EncoderClient, connect
from tests.conftest import start_service
from tests.media import ct_dicom, image_bytes, phantom_hu, render_screenshot


def start_vision(**overrides):
    return start_service("vision", **overrides)


@pytest.fixture(scope="module")
def vision():
    handle = start_vision()
    with connect(handle.address) as channel:
        yield EncoderClient(channel)
    handle.stop(grace=0.5)


def test_info(vision):
    info = vision.info()
    assert info.modality == "image" and info.feature_width == 1280
    assert info.model_version.startswith("efficientnet-lite0@")
    assert "application/dicom" in info.media_types and list(info.options) == ["ocr", "ocr_quick", "lesions"]
    assert info.limits.max_pixels == 40_000_000


def test_screenshot_features_and_ocr_reads_the_error_text(vision):
    png = image_bytes(render_screenshot("Error 402: Payment declined"))
    result = vision.encode(png, "image/png", options=["ocr"])
    assert result.sequence.shape == (49, 1280)  # a 7x7 grid of patches
    assert result.side.tags["grid"] == "7x7" and result.side.tags["width"] == "1024"
    lines = [span.text for span in result.side.text_spans]
    assert any("Error 402: Payment declined" in line for line in lines), lines
    assert all(0 < span.confidence <= 1 and len(span.box) == 4 for span in result.side.text_spans)
    assert "ocr" in result.pooled_message.timings_ms


@pytest.mark.parametrize("fmt, media_type", [("AVIF", "image/avif"), ("GIF", "image/gif")])
def test_a_screenshot_saved_as_avif_or_gif_is_read(vision, fmt, media_type):
    """A web page's images are often AVIF (a browser saves them so), a screen recording's
    frames GIF (palette, dithered): decoded, the GIF's first frame, and read."""
    frames = [render_screenshot("Error 402: Payment declined"), render_screenshot("Everything is fine")]
    data = image_bytes(frames[0], fmt, **({"save_all": True, "append_images": frames[1:]} if fmt == "GIF" else {}))
    result = vision.encode(data, media_type, options=["ocr"])
    lines = [span.text for span in result.side.text_spans]
    assert any("Error 402: Payment declined" in line for line in lines), lines
    assert result.side.tags["width"] == "1024" and result.side.tags["height"] == "640"


def test_a_heic_photo_is_refused_by_name(vision):
    """HEIC, as iPhones take photos, is not decoded here: the refusal names it. The header
    is built by its specification (no HEIC encoder on this machine)."""
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)
    with pytest.raises(grpc.RpcError) as raised:
        vision.encode(heic, "image/heic")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'image/heic' is not accepted by the image encoder" in raised.value.details(), raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        vision.encode(heic, "image/png")
    assert "declared image/png but the bytes look like image/heic" in raised.value.details()


def test_openvino_runs_the_same_ocr_and_reads_the_same_message(vision):
    """The default ocr_engine, openvino, runs the same PP-OCR models as onnxruntime (about
    2x faster here). On a desktop and a dark phone screen both read the message: the same
    paragraph, its box within a few pixels."""
    from modalmesh.common.layout import paragraphs
    from modalmesh.data.screens import png_bytes, render_app_screen

    message = "Your card issuer declined this purchase"
    handle = start_vision(ocr_engine="onnxruntime")
    try:
        with connect(handle.address) as channel:
            engines = {"openvino": vision, "onnxruntime": EncoderClient(channel)}
            for seed, mobile in ((1, False), (2, True)):
                screen = png_bytes(render_app_screen(message, np.random.default_rng(seed), mobile=mobile, dark=mobile, layout="dialog"))
                spans = {name: client.encode(screen, "image/png", options=["ocr"]).side.text_spans for name, client in engines.items()}
                for name, read in spans.items():
                    assert message in paragraphs((s.text, tuple(s.box)) for s in read), (name, [s.text for s in read])
                boxes = {name: [tuple(s.box) for s in read if s.text.split()[0] in message.split()[:2]] for name, read in spans.items()}
                assert boxes["openvino"] and len(boxes["openvino"]) == len(boxes["onnxruntime"])
                assert np.abs(np.array(boxes["openvino"]) - np.array(boxes["onnxruntime"])).max() <= 6
    finally:
        handle.stop(grace=0.5)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_the_ocr_warm_up_runs_recognition_on_a_line_of_text(engine):
    """The service warms OCR up at start with a line of text, not a blank image: a blank one
    never reaches recognition, which then cost the first real screenshot 0.3 s more."""
    from modalmesh.vision.ocr import ScreenReader

    reader = ScreenReader(engine=engine)
    lines = reader.warm_up()
    assert any("Warming up" in line.text for line in lines), [line.text for line in lines]
    assert reader.reads_latin == (engine == "openvino")  # the Latin alphabet head is an OpenVINO model


def test_a_missing_ocr_runtime_is_named_at_start_up(monkeypatch):
    """OpenVINO not installed (here: hidden from imports): the service refuses to start with
    a message that names the engine and the setting that picks the other one."""
    import sys

    from modalmesh.vision.ocr import ScreenReader

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(RuntimeError, match="OCR engine openvino: openvino is not installed.*--ocr-engine"):
        ScreenReader(engine="openvino")


def test_a_wrapped_message_on_a_phone_screen_is_read_as_one_paragraph(vision):
    from modalmesh.common.layout import paragraphs
    from modalmesh.data.screens import png_bytes, render_app_screen

    message = "Card ending 4242 was flagged as suspicious"  # wraps onto two lines at phone width
    screen = render_app_screen(message, np.random.default_rng(3), mobile=True, dark=False, layout="dialog")
    spans = vision.encode(png_bytes(screen), "image/png", options=["ocr"]).side.text_spans
    assert not any(span.text.strip() == message for span in spans)  # OCR alone gives pieces
    read = paragraphs((span.text, tuple(span.box)) for span in spans)
    assert message in read, read
    assert read.index(message) > 0  # after the app's title and menus: reading order


def test_capped_detection_size_reads_what_the_engine_rule_reads():
    """The default detection size (longer side <= 960, never scaled up) against the
    engine's own rule (shorter side scaled to 736): same message, boxes in input pixels."""
    from modalmesh.data.screens import render_app_screen
    from modalmesh.vision.ocr import CAPPED_DET_SIDE, ScreenReader

    capped, engine_rule = ScreenReader(CAPPED_DET_SIDE), ScreenReader(0)
    screens = [
        render_screenshot("Your card was declined (code 51)", size=(1920, 1080)),
        render_app_screen("Session expired", np.random.default_rng(5), mobile=True, dark=True, layout="toast"),
    ]
    for screen in screens:
        rgb = np.asarray(screen.convert("RGB"))
        read = [[line.text for line in reader.read(rgb)] for reader in (capped, engine_rule)]
        message = "Your card was declined (code 51)" if screen.width == 1920 else "Session expired"
        assert any(message in line for line in read[0]), read[0]
        assert [t.replace(" ", "") for t in read[0] if message in t] == [t.replace(" ", "") for t in read[1] if message in t]
        boxes = [line.box for line in capped.read(rgb)]
        assert max(box[2] for box in boxes) <= screen.width + 1 and max(box[3] for box in boxes) <= screen.height + 1


def test_the_quick_reading_detects_smaller_and_reads_the_same_message(vision):
    """'ocr_quick': detection on the image scaled to the quick size (960 px on its longer
    side), fewer boxes' worth of pixels than the engine's rule; the same message read. The
    reader's own size is back for the next 'ocr' call."""
    screen = image_bytes(render_screenshot("Your card was declined (code 51)", size=(1920, 1080)))
    full_before = [span.text for span in vision.encode(screen, "image/png", options=["ocr"]).side.text_spans]
    quick = vision.encode(screen, "image/png", options=["ocr_quick"])
    full_after = [span.text for span in vision.encode(screen, "image/png", options=["ocr"]).side.text_spans]
    assert any("Your card was declined (code 51)" in span.text for span in quick.side.text_spans)
    assert "ocr_quick" in quick.pooled_message.timings_ms and "ocr" not in quick.pooled_message.timings_ms
    assert full_after == full_before
    with pytest.raises(grpc.RpcError) as raised:
        vision.encode(screen, "image/png", options=["ocr", "ocr_quick"])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not both" in raised.value.details()
    assert vision.info().modality == "image"  # still serving


@pytest.mark.parametrize(
    "height, width, own, quick, expected",
    [
        (1080, 1920, ("min", 736), 960, ("max", 960)),  # large: scaled down to the quick size
        (640, 1024, ("min", 736), 960, ("max", 960)),  # the full reading scales it up to 1178x736; quick, down to 960x600
        (600, 800, ("min", 736), 960, ("min", 720)),  # small: the full reading's 1.23x, capped at 960 px (1.2x)
        (844, 390, ("min", 736), 960, ("min", 444)),  # a phone: up to 960 px tall, not 1593
        (800, 900, ("min", 736), 960, ("max", 900)),  # the full reading's own scale (1.0) fits
        (600, 800, ("max", 640), 960, ("max", 640)),  # a reader capped below the quick size: its own scale
        (600, 800, ("max", 960), 960, ("max", 800)),  # a capped reader never scales up; nor does its quick reading
        (600, 800, ("min", 736), None, ("min", 736)),  # not quick: the reader's own rule
    ],
)
def test_the_quick_reading_detects_at_the_full_readings_scale_at_most_the_quick_size(height, width, own, quick, expected):
    from modalmesh.vision.ocr import detection_size

    assert detection_size(height, width, *own, quick) == expected


def test_a_small_screen_is_read_quickly_at_the_full_readings_scale(reader):
    """A screen under the quick size is detected scaled up as the full reading scales it
    (capped at the quick size), so both read the same lines; the reader's own size is back after."""
    from modalmesh.data.screens import render_app_screen

    seen = []
    detector = reader._detector
    preprocess = detector.get_preprocess

    def spy():
        made = preprocess()
        seen.append(made.preprocess.resize(np.zeros((600, 800, 3), dtype=np.uint8)).shape[:2])
        return made

    detector.get_preprocess = spy
    try:
        drawn = render_app_screen("Your card was declined", np.random.default_rng(11), mobile=False, dark=False, layout="banner")
        screen = np.asarray(drawn.convert("RGB").resize((800, 600)))
        quick = [line.text for line in reader.read(screen, det_side=960, latin=True)]
        full = [line.text for line in reader.read(screen)]
    finally:
        detector.get_preprocess = preprocess
    assert seen == [(704, 960), (736, 992)], seen  # quick: 1.2x (to 960x720, in multiples of 32); full: 1.23x
    assert quick == full, (quick, full)
    assert (detector.limit_type, detector.limit_side_len) == ("min", 736)


def test_the_quick_reading_can_read_every_character_at_once():
    """`ocr_quick_alphabet all`: no Latin head is prepared and the quick reading recognises
    every character at once (for screens mostly in other scripts)."""
    handle = start_vision(ocr_quick_alphabet="all")
    try:
        assert handle.service.reader is not None and not handle.service.reader.reads_latin
        with connect(handle.address) as channel:
            quick = EncoderClient(channel).encode(image_bytes(render_screenshot("Your card was declined (code 51)")), "image/png", options=["ocr_quick"])
        assert any("Your card was declined (code 51)" in span.text for span in quick.side.text_spans)
    finally:
        handle.stop(grace=0.5)


def test_a_reading_at_another_detection_size_leaves_the_readers_own():
    from modalmesh.vision.ocr import ScreenReader

    reader = ScreenReader(0)
    rgb = np.asarray(render_screenshot("Session expired", size=(1366, 768)).convert("RGB"))
    reader.read(rgb, det_side=480)
    assert (reader._detector.limit_type, reader._detector.limit_side_len) == ("min", 736)  # the engine's rule


def test_detection_preprocessing_by_table_gives_the_engines_own_numbers():
    from rapidocr.ch_ppocr_det.utils import DetPreProcess

    from modalmesh.vision.ocr import ScreenReader, TablePreprocess

    reader = ScreenReader(0)
    detector = reader._detector
    generator = np.random.default_rng(3)
    for height, width, det_side in ((544, 960, 960), (800, 1280, 0), (390, 300, 0), (1080, 1920, 960)):
        if det_side:
            detector.limit_type, detector.limit_side_len = "max", det_side
        else:
            detector.limit_type, detector.limit_side_len = "min", 736
        rgb = generator.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        by_table = detector.get_preprocess()
        assert isinstance(by_table, TablePreprocess)
        engine = DetPreProcess(detector.limit_side_len, detector.limit_type, detector.mean, detector.std)
        expected = engine(rgb)
        found = by_table(rgb)
        assert found.dtype == expected.dtype == np.float32 and found.shape == expected.shape
        np.testing.assert_array_equal(found, expected)  # bit for bit
    floats = generator.random((64, 96, 3), dtype=np.float32) * 255  # not 8-bit: the engine's own way
    np.testing.assert_array_equal(detector.get_preprocess()(floats), engine(floats))


def test_ocr_runs_only_when_asked(vision):
    result = vision.encode(image_bytes(render_screenshot("Login failed")), "image/png")
    assert len(result.side.text_spans) == 0 and "ocr" not in result.pooled_message.timings_ms


def test_different_screens_give_different_features(vision):
    first = vision.encode(image_bytes(render_screenshot("Payment declined")), "image/png", output_datatype="FP32").pooled
    same = vision.encode(image_bytes(render_screenshot("Payment declined")), "image/png", output_datatype="FP32").pooled
    dark = vision.encode(image_bytes(render_screenshot("Payment declined", dark=True)), "image/png", output_datatype="FP32").pooled
    np.testing.assert_array_equal(first, same)
    cosine = float(first @ dark / np.linalg.norm(first) / np.linalg.norm(dark))
    assert cosine < 0.99


def test_images_in_one_encode_batch_call_each_get_what_they_get_alone(vision):
    screens = [image_bytes(render_screenshot("Payment declined")), image_bytes(render_screenshot("Login failed", dark=True))]
    together = vision.encode_batch(screens, "image/png", output_datatype="FP32")
    for screen, result in zip(screens, together, strict=True):
        np.testing.assert_array_equal(result.pooled, vision.encode(screen, "image/png", output_datatype="FP32").pooled)
    assert vision.info().limits.max_batch_inputs == 8
    with pytest.raises(grpc.RpcError) as raised:
        vision.encode_batch([screens[0], b"not an image"], "image/png")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert errors.field_violations(raised.value)[0][0] == "inputs[1].header.media_type"  # the bytes are not a PNG
    with pytest.raises(grpc.RpcError) as raised:
        vision.encode_batch(screens * 5, "image/png")
    assert errors.field_violations(raised.value) == [("inputs", "10 inputs; the image encoder takes at most 8 in one call")]


def test_ct_dicom_through_the_service(vision):
    result = vision.encode(ct_dicom(phantom_hu(128), pixel_spacing=(0.8, 0.8)), "application/dicom")
    tags = result.side.tags
    assert tags["Modality"] == "CT" and tags["PixelSpacing"] == "0.8\\0.8" and tags["window"] == "40/400"
    assert result.sequence.shape == (49, 1280)


def test_the_vision_service_reports_the_measurement_for_ct(vision):
    from modalmesh.data.ct import make_phantom
    from modalmesh.data.generate import PHANTOM_SIZE

    phantom = make_phantom(21, size=PHANTOM_SIZE, lesion_count=1, diameter_mm=24.0)
    spacing = phantom.pixel_spacing_mm
    result = vision.encode(ct_dicom(phantom.hounsfield, pixel_spacing=(spacing, spacing)), "application/dicom", options=["lesions"])
    no_spacing = vision.encode(ct_dicom(phantom.hounsfield, pixel_spacing=(0.0, 0.0)), "application/dicom", options=["lesions"])
    tags = dict(result.side.tags)
    assert tags["lesion_count"] == "1" and tags["lesion_sides"] == phantom.side
    assert float(tags["lesion_diameters_mm"]) == pytest.approx(24.0, abs=1.0)
    assert "measure" in result.pooled_message.timings_ms
    assert "lesion_count" not in dict(no_spacing.side.tags)
    # Measured when asked for: a caller that does not read lesions does not pay for them.
    unasked = vision.encode(ct_dicom(phantom.hounsfield, pixel_spacing=(spacing, spacing)), "application/dicom")
    assert "lesion_count" not in dict(unasked.side.tags) and "measure" not in unasked.pooled_message.timings_ms
    assert "lesions" in vision.info().options


def test_a_prone_scan_reports_the_lesion_on_the_patients_side(vision):
    """Stored as acquired prone (ImageOrientationPatient -1 0 0 0 -1 0), the slice is the
    display mirrored both ways: the side must be read from the orientation, not the display."""
    from modalmesh.data.ct import make_phantom
    from modalmesh.data.generate import PHANTOM_SIZE

    phantom = make_phantom(21, size=PHANTOM_SIZE, lesion_count=1, diameter_mm=24.0)
    spacing = phantom.pixel_spacing_mm
    prone = np.ascontiguousarray(phantom.hounsfield[::-1, ::-1])
    tags = dict(
        vision.encode(ct_dicom(prone, pixel_spacing=(spacing, spacing), orientation=(-1, 0, 0, 0, -1, 0)), "application/dicom", options=["lesions"]).side.tags
    )
    assert tags["lesion_sides"] == phantom.side and tags["reoriented"] == "flipped left-right, flipped top-bottom"


def test_a_png_scan_with_its_window_stated_is_measured_like_the_dicom(vision):
    from modalmesh.data.ct import make_phantom, windowed_png
    from modalmesh.data.generate import PHANTOM_SIZE

    phantom = make_phantom(23, size=PHANTOM_SIZE, lesion_count=2, diameter_mm=14.0)
    spacing = phantom.pixel_spacing_mm
    dicom = dict(vision.encode(ct_dicom(phantom.hounsfield, pixel_spacing=(spacing, spacing)), "application/dicom", options=["lesions"]).side.tags)
    for png, window in ((windowed_png(phantom.hounsfield, -600, 1500), "lung"), (windowed_png(phantom.hounsfield, -500, 1400, bits=16), "-500/1400")):
        tags = dict(vision.encode(png, "image/png", options=["lesions"], parameters={"pixel_spacing": f"{spacing}", "window": window}).side.tags)
        assert tags["lesion_count"] == dicom["lesion_count"] == "2" and tags["lesion_sides"] == dicom["lesion_sides"]
        measured = [float(d) for d in tags["lesion_diameters_mm"].split("\\")]
        assert measured == pytest.approx([float(d) for d in dicom["lesion_diameters_mm"].split("\\")], abs=0.5)
    # A soft-tissue window clips the lungs' air: nothing to measure, and it says so.
    soft = dict(
        vision.encode(
            windowed_png(phantom.hounsfield, 40, 400), "image/png", options=["lesions"], parameters={"pixel_spacing": f"{spacing}", "window": "soft_tissue"}
        ).side.tags
    )
    assert "lesion_count" not in soft and "too narrow" in soft["window"]
    # Without a window a PNG's grey levels are not densities: not measured.
    plain = dict(vision.encode(windowed_png(phantom.hounsfield, -600, 1500), "image/png", options=["lesions"], parameters={"pixel_spacing": "0.7"}).side.tags)
    assert "lesion_count" not in plain and "window" not in plain
    with pytest.raises(grpc.RpcError) as failure:
        vision.encode(windowed_png(phantom.hounsfield, -600, 1500), "image/png", parameters={"pixel_spacing": "0.7", "window": "wide"})
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "header.parameters.window" in failure.value.details()


def test_concurrent_images_each_get_their_own_features(vision):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    images = [image_bytes(Image.new("RGB", (96, 96), c)) for c in colours]
    alone = [vision.encode(data, "image/png", output_datatype="FP32", pooled_only=True).pooled for data in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda d: vision.encode(d, "image/png", output_datatype="FP32", pooled_only=True).pooled, images))
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(
    "data, media_type, field, complaint",
    [
        (b"", "image/png", "payload", "0 bytes"),
        (b"%PDF-1.7....", "image/png", "header.media_type", "match no supported image format"),
        (b"GIF89a....", "image/png", "header.media_type", "look like image/gif"),
        (b"GIF89a....", "image/gif", "payload", "cannot decode"),
        (image_bytes(Image.new("RGB", (8, 8))), "image/jpeg", "header.media_type", "look like image/png"),
        (image_bytes(Image.new("RGB", (64, 64)))[:60], "image/png", "payload", "cannot decode"),
    ],
)
def test_bad_images_are_invalid_argument_and_the_service_stays_healthy(vision, data, media_type, field, complaint):
    with pytest.raises(grpc.RpcError) as raised:
        vision.encode(data, media_type)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in raised.value.details()
    assert errors.field_violations(raised.value)[0][0] == field
    assert vision.encode(image_bytes(Image.new("RGB", (32, 32))), "image/png").pooled.shape == (1280,)


def test_ocr_can_be_turned_off(tmp_path):
    handle = start_vision(ocr=False)
    try:
        with connect(handle.address) as channel:
            client = EncoderClient(channel)
            assert list(client.info().options) == ["lesions"]
            for option in ("ocr", "ocr_quick"):
                with pytest.raises(grpc.RpcError) as raised:
                    client.encode(image_bytes(Image.new("RGB", (32, 32))), "image/png", options=[option])
                assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "turned off" in raised.value.details()
    finally:
        handle.stop(grace=0.5)


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    return folder


def test_a_transformers_vit_directory_as_backbone(tiny_vit_dir):
    handle = start_vision(model=str(tiny_vit_dir), ocr=False)
    try:
        with connect(handle.address) as channel:
            client = EncoderClient(channel)
            assert client.info().feature_width == 32
            result = client.encode(image_bytes(Image.new("RGB", (50, 40), (9, 99, 199))), "image/png")
            assert result.sequence.shape == (16, 32)  # (32 / 8)^2 patches, class token dropped
            assert result.side.tags["grid"] == "4x4"
    finally:
        handle.stop(grace=0.5)


def test_a_torchvision_architecture_with_local_safetensors(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    save_file(torchvision.models.resnet18(weights=None).state_dict(), str(weights))
    handle = start_vision(model=f"torchvision:resnet18:{weights}", ocr=False)
    try:
        with connect(handle.address) as channel:
            result = EncoderClient(channel).encode(image_bytes(Image.new("RGB", (64, 64), (1, 2, 3))), "image/png")
            assert result.sequence.shape == (49, 512) and result.side.tags["grid"] == "7x7"
    finally:
        handle.stop(grace=0.5)


def test_int8_quantization_of_a_transformer_backbone_stays_close(tiny_vit_dir):
    from modalmesh.vision.model import ImageBackbone

    full = ImageBackbone(str(tiny_vit_dir))
    int8 = ImageBackbone(str(tiny_vit_dir), quantize=True)
    assert int8.version.endswith("+int8")
    rgb = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
    a = full.encode_batch([full.preprocess(rgb)])[0].pooled
    b = int8.encode_batch([int8.preprocess(rgb)])[0].pooled
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.95


@pytest.fixture(scope="module")
def reader():
    from modalmesh.vision.ocr import ScreenReader

    return ScreenReader()


@pytest.mark.parametrize("kind", ["checkout", "tracking", "bank", "account", "support"])
def test_ocr_reads_the_status_message_on_pages_a_real_browser_drew(reader, kind):
    """data/browser.py's pages, laid out and drawn by headless Chromium at a phone's size:
    the status message is read whole, among the page's other lines."""
    from modalmesh.data import browser

    if not browser.available():
        pytest.skip("headless Chromium is not installed (`make setup-browser`)")
    message = "Your session expired. Please sign in again."
    page = browser.render_page(message, np.random.default_rng(4), (390, 844), kind == "bank", kind)
    assert page.size == (390, 844)
    lines = reader.read(np.asarray(page))
    read = " ".join(line.text for line in lines)
    assert "session expired" in read and "sign in again" in read, read
    assert len(lines) >= 4  # the page's headings, menus and details are read too


def _lines_screen(lines: list[str], font_file: str = "DejaVuSans.ttf", package: str = "fonts-dejavu-core") -> np.ndarray:
    from PIL import ImageDraw, ImageFont

    try:
        font = ImageFont.truetype(font_file, 26)
    except OSError:
        pytest.skip(f"{font_file} is not installed (the {package} package)")
    page = Image.new("RGB", (1024, 640), "white")
    draw = ImageDraw.Draw(page)
    for row, line in enumerate(lines):
        draw.text((40, 40 + 64 * row), line, fill=(20, 20, 20), font=font)
    return np.asarray(page)


def test_the_latin_alphabet_reads_what_every_character_reads(reader):
    """The quick reading's Latin head (LatinHead: 547 of the model's 18,710 characters)
    reads an English screen, prices and punctuation included, to the same text as the full
    alphabet, and needs no line read again."""
    screen = _lines_screen(
        ["Payment failed: card declined (code 51)", "Order #A-1234 · total $58.20", "Home   Orders   Account", "Try again or contact support@shop.example"]
    )
    everything = reader.read(screen, det_side=960)
    again = reader._recognition.read_again
    latin = reader.read(screen, det_side=960, latin=True)
    assert [line.text for line in latin] == [line.text for line in everything] and len(latin) == 4
    assert all(abs(a.confidence - b.confidence) < 0.02 for a, b in zip(latin, everything))
    assert reader._recognition.read_again == again  # all read by the Latin head
    from modalmesh.vision.ocr import REC_GROUP_MAX

    assert reader._latin.recognizer.rec_batch_num == REC_GROUP_MAX  # a group is one call, whose scores judge its lines


def test_a_line_in_another_script_is_read_again_with_every_character(reader):
    """A line the Latin alphabet cannot read (Greek here; Chinese and Japanese likewise) is
    read again with every character: the quick reading never turns it into Latin
    look-alikes. The English line beside it stays with the Latin head."""
    screen = _lines_screen(["Σφάλμα 402: η κάρτα απορρίφθηκε", "Payment failed: card declined"])
    everything = reader.read(screen, det_side=960)
    again = reader._recognition.read_again
    latin = reader.read(screen, det_side=960, latin=True)
    assert [line.text for line in latin] == [line.text for line in everything]
    assert any(ord(c) > 0x36F for c in latin[0].text), latin[0].text  # Greek letters read
    assert reader._recognition.read_again == again + 1


def test_a_chinese_line_is_read_again_with_every_character(reader):
    screen = _lines_screen(["支付失败，请稍后再试", "错误代码：500"], "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", "fonts-wqy-zenhei")
    latin = reader.read(screen, det_side=960, latin=True)
    assert [line.text for line in latin] == [line.text for line in reader.read(screen, det_side=960)]
    assert "支付失败" in latin[0].text


def test_short_upright_words_are_read_as_drawn(reader):
    """Screen text is upright: PP-OCR's angle classifier turns a grey "Edit" at 13 px over
    (180 degrees at 0.92), and the word then reads "Edt"."""
    from PIL import ImageDraw, ImageFont

    page = Image.new("RGB", (480, 160), "white")
    draw = ImageDraw.Draw(page)
    draw.text((20, 20), "Delivery address", fill="black", font=ImageFont.load_default(size=20))
    draw.text((20, 80), "Edit", fill=(60, 60, 60), font=ImageFont.load_default(size=13))
    assert [line.text for line in reader.read(np.asarray(page))] == ["Delivery address", "Edit"]


def test_recognition_batches_are_padded_to_a_few_widths(reader):
    """Lines of any length reach the recognition model at widths in REC_WIDTH_STEP steps,
    so the runtime sees the same input shapes again."""
    from modalmesh.vision.ocr import REC_WIDTH_STEP

    recognizer = reader._engine.text_rec.recognizer
    crops = [np.full((20, width, 3), 255, dtype=np.uint8) for width in (37, 200, 333, 517, 1000)]
    for crop in crops:
        width = recognizer.resize_norm_img(crop, crop.shape[1] / crop.shape[0]).shape[2]
        assert width % REC_WIDTH_STEP == 0, width
        assert 48 * crop.shape[1] / crop.shape[0] <= width < 48 * crop.shape[1] / crop.shape[0] + REC_WIDTH_STEP  # never cut


def test_recognition_batches_lines_of_about_one_width_and_keeps_their_order(reader, monkeypatch):
    """A short label is not padded to a long message's width: lines share a model call only
    with lines of about their width (REC_GROUP_SPREAD; every line under the model's minimum
    width shares one), and each reads as it does alone."""
    from PIL import ImageDraw, ImageFont
    from rapidocr.ch_ppocr_rec.typings import TextRecInput

    from modalmesh.vision.ocr import REC_GROUP_SPREAD

    def crop(text: str) -> np.ndarray:
        font = ImageFont.load_default(size=24)
        width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) + 16
        image = Image.new("RGB", (width, 34), "white")
        ImageDraw.Draw(image).text((8, 4), text, fill="black", font=font)
        return np.asarray(image)

    words = ["Cancel", "Your payment could not be processed today", "OK", "Help", "Track the parcel you ordered last week"]
    crops = [crop(word) for word in words]
    grouped = reader._engine.text_rec
    session, shapes = grouped.recognizer.session, []

    class Recording:
        def __call__(self, batch):
            shapes.append(batch.shape)
            return session(batch)

    monkeypatch.setattr(grouped.recognizer, "session", Recording())
    read = grouped(TextRecInput(img=crops))
    assert list(read.txts) == words
    assert shapes[0][:1] == (3,) and shapes[0][3] == 320  # the three short words together
    assert [shape[0] for shape in shapes] == [3, 1, 1]
    for shape in shapes:  # no line padded to more than REC_GROUP_SPREAD past its own width
        assert shape[3] <= max(grouped.width(c) for c in crops if grouped.width(c) <= shape[3]) * (1 + REC_GROUP_SPREAD)
    for word, alone in zip(words, crops):
        assert grouped(TextRecInput(img=[alone])).txts == (word,)


def _page(width: int, height: int, rows: list[int], left: int = 40) -> np.ndarray:
    from PIL import ImageDraw, ImageFont

    page = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(page), ImageFont.load_default(size=30)
    for number, top in enumerate(rows):
        draw.text((left, top), f"Order {number} was updated", fill="black", font=font)
    return np.asarray(page)


def test_a_tall_page_is_read_in_tiles_each_line_once(reader):
    """A 1080x8000 scrolling capture: read whole, the engine shrank it to 270x2000 px and
    the text to smears. In tiles every line comes back once, at its place, including one
    drawn right across a tile border."""
    import re

    from modalmesh.vision.ocr import _tiles

    tiles = _tiles(8000, 1080)
    assert len(tiles) > 1 and all(bottom - top <= 3.0 * 1080 for top, bottom, _, _ in tiles)
    border = tiles[1][2]  # where the second tile's own band starts
    rows = sorted({*range(60, 7900, 600), border - 18})
    lines = reader.read(_page(1080, 8000, rows))
    numbers = [int(m.group(1)) for line in lines if (m := re.search(r"Order (\d+) was", line.text))]
    assert sorted(numbers) == list(range(len(rows))), [line.text for line in lines]
    for line in lines:
        number = int(re.search(r"Order (\d+)", line.text).group(1))
        assert abs(line.box[1] - rows[number]) < 15  # boxes in the page's pixels, not the tile's


def test_ocr_reads_at_most_max_lines_from_the_top_and_says_text_was_left(reader):
    """Recognition costs about 5 ms a short line, under one lock: read whole, a 1920x1920
    screen of 608 short lines holds the OCR engine for 2.9 s, a 1080x8000 page of 921
    lines for 5.1 s."""
    import re

    from modalmesh.vision.ocr import ScreenReader

    capped = ScreenReader(max_lines=4)
    screen = _page(1024, 900, list(range(40, 860, 70)))  # 12 lines
    lines = capped.read(screen)
    assert [line.text for line in lines] == [f"Order {n} was updated" for n in range(4)] and lines.more
    few = capped.read(_page(1024, 400, [40, 120, 200]))
    assert len(few) == 3 and not few.more
    assert len(reader.read(screen)) == 12 and not reader.read(screen).more  # the default reads them all
    # A long page's tiles share the budget: the tiles below the first lines are not read.
    page = capped.read(_page(1080, 8000, list(range(60, 7900, 300))))
    numbers = [int(re.search(r"Order (\d+)", line.text).group(1)) for line in page]
    assert numbers == [0, 1, 2, 3] and page.more


def test_the_vision_service_says_when_ocr_left_text_unread():
    handle = start_vision(ocr_max_lines=3)
    try:
        with connect(handle.address) as channel:
            client = EncoderClient(channel)
            page = Image.fromarray(_page(1024, 600, [40, 120, 200, 280, 360]))
            result = client.encode(image_bytes(page), "image/png", options=["ocr"])
            assert [s.text for s in result.side.text_spans] == [f"Order {n} was updated" for n in range(3)]
            assert result.side.tags["ocr_more"] == "text left unread: the first 3 lines were read (ocr_max_lines)"
            result = client.encode(image_bytes(Image.fromarray(_page(1024, 600, [40, 120]))), "image/png", options=["ocr"])
            assert len(result.side.text_spans) == 2 and "ocr_more" not in result.side.tags
    finally:
        handle.stop(grace=0.5)


def test_strips_and_wide_images_are_read_without_errors(reader):
    # The engine failed on strips past about 1:125 (an INTERNAL error for the whole image)
    # and spent 18 s detecting a 1:60 one; they are padded to 1:3 now.
    for shape in [(1, 5000), (5000, 1), (20, 5000), (5000, 20), (3, 3000)]:
        assert reader.read(np.full((*shape, 3), 255, dtype=np.uint8)) == []
    # Shrunk to the engine's 2000 px before padding: padded whole, this 8 MP strip would
    # have needed 15 GB.
    assert reader.read(np.full((40, 200_000, 3), 255, dtype=np.uint8)) == []
    wide = reader.read(_page(4200, 300, [40, 200], left=2000))
    assert [line.text for line in wide] == ["Order 0 was updated", "Order 1 was updated"]
    assert all(abs(line.box[0] - 2000) < 40 and line.box[2] < 4200 for line in wide)  # in the image's pixels


def test_ocr_gives_up_when_the_caller_has_no_time_left(reader):
    page = _page(640, 400, [40])
    with pytest.raises(errors.ServiceError, match="DEADLINE_EXCEEDED: OCR: deadline passed"):
        reader.read(page, timeout=0.0)
    with reader._engine_turns.turn(None):  # another image is being read
        with pytest.raises(errors.ServiceError, match="OCR: deadline passed while waiting for the engine"):
            reader.read(page, timeout=0.2)
        with pytest.raises(errors.ServiceError, match="OCR: the caller went away while waiting for the engine"):
            reader.read(page, timeout=30, wanted=lambda: False)
    assert [line.text for line in reader.read(page, timeout=30)] == ["Order 0 was updated"]


def test_a_thin_strip_with_ocr_is_encoded(vision):
    strip = image_bytes(Image.new("RGB", (5000, 1), "white"))
    result = vision.encode(strip, "image/png", options=["ocr"])
    assert result.pooled.shape == (1280,) and len(result.side.text_spans) == 0


def test_pixel_count_reads_the_header_only():
    from modalmesh.vision.decode import pixel_count

    assert pixel_count(image_bytes(render_screenshot("Hello", size=(640, 400))), "image/png") == 640 * 400
    assert pixel_count(ct_dicom(phantom_hu(128), pixel_spacing=(0.8, 0.8)), "application/dicom") == 128 * 128
    assert pixel_count(b"\x89PNG\r\n\x1a\n not really", "image/png") == 0  # decode_image says what is wrong


def test_images_wait_for_their_pixels_and_give_up_at_the_deadline():
    # Decoded images cost about 25 bytes per pixel at the peak: 8 concurrent 40 MP
    # images would take the service to 5 GB, past its pod's 3 GiB.
    handle = start_vision(max_pixels_in_flight=500_000)
    png = image_bytes(render_screenshot("Payment declined", size=(640, 400)))
    try:
        with connect(handle.address) as channel, ThreadPoolExecutor(1) as pool:
            client = EncoderClient(channel)
            budget = handle.service.pixels
            with budget.hold(400_000, None):  # others' images: 100 000 pixels left, this one needs 256 000
                with pytest.raises(grpc.RpcError) as raised:
                    client.encode(png, "image/png", timeout=1.0)
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                deadline = time.monotonic() + 5
                while budget.waiting and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert budget.waiting == 0  # the service gave up on it too (its deadline had passed)
                waiting = pool.submit(client.encode, png, "image/png", timeout=30)
                time.sleep(0.3)
                assert not waiting.done()
            assert waiting.result(timeout=30).sequence.shape == (49, 1280)  # ran once the pixels were free
            assert budget.free == budget.total
    finally:
        handle.stop(grace=0.5)


def test_a_screen_reading_beside_the_backbone_gives_up_at_the_deadline_and_lets_go():
    """OCR runs on its own thread beside the backbone. A call whose reading cannot get the
    OCR engine before its deadline is DEADLINE_EXCEEDED, its pixels and its thread are given
    back, and the next call is read."""
    handle = start_vision()
    png = image_bytes(render_screenshot("Payment declined", size=(640, 400)))
    try:
        with connect(handle.address) as channel:
            client = EncoderClient(channel)
            service = handle.service
            engine = service.reader._engine_turns
            assert engine.take_now(1)  # another reading holds the engine
            try:
                with pytest.raises(grpc.RpcError) as raised:
                    client.encode(png, "image/png", options=["ocr_quick"], timeout=1.0)
                assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                deadline = time.monotonic() + 5
                while (engine.waiting or service.pixels.free != service.pixels.total) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert engine.waiting == 0 and service.pixels.free == service.pixels.total
            finally:
                engine.give_back(1)
            read = client.encode(png, "image/png", options=["ocr_quick"], timeout=30)
            assert any("Payment declined" in span.text for span in read.side.text_spans)
            assert read.pooled_message.timings_ms["ocr_quick"] > 0 and read.sequence.shape == (49, 1280)
    finally:
        handle.stop(grace=0.5)


def test_huge_images_are_shrunk_in_uint8_before_the_backbones_float_resize():
    from modalmesh.vision.model import HUGE_SIDE, ImageBackbone, reduce_huge

    screen = np.asarray(render_screenshot("Payment declined", size=(1024, 640)).convert("RGB"))
    assert reduce_huge(screen) is screen  # the tasks' images: untouched, features unchanged
    huge = np.ascontiguousarray(np.repeat(np.repeat(screen, 5, axis=0), 5, axis=1))  # 5120x3200
    reduced = reduce_huge(huge)
    assert max(reduced.shape[:2]) <= HUGE_SIDE and reduced.shape[2] == 3 and reduced.dtype == np.uint8
    backbone = ImageBackbone("", False, False)
    direct = _float_resize_from_full(backbone, huge)
    assert torch.nn.functional.cosine_similarity(backbone.preprocess(huge).flatten(), direct.flatten(), dim=0) > 0.99


def _float_resize_from_full(backbone, rgb):
    """The reference: a float resize straight from the full image."""
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
    image = torch.nn.functional.interpolate(image, size=(backbone.input_size, backbone.input_size), mode="bilinear", antialias=True, align_corners=False)
    return ((image - torch.tensor(backbone.mean).view(1, 3, 1, 1)) / torch.tensor(backbone.std).view(1, 3, 1, 1))[0]


def test_openvino_runs_the_image_backbone_with_torchs_features():
    # The bundled EfficientNet-Lite0 on both engines through the real loading code, on
    # real inputs the service sees (a rendered screenshot, a decoded CT slice): what the
    # service serves by default (openvino) is what the shipped weights were trained on.
    from pathlib import Path

    from modalmesh.common.compiled import OpenVINOSettings
    from modalmesh.vision.decode import decode_image
    from modalmesh.vision.model import ImageBackbone

    in_torch = ImageBackbone("")
    converted = ImageBackbone("", engine="openvino", openvino=OpenVINOSettings(threads=2))
    assert converted.network is None and converted.compiled is not None and converted.version == in_torch.version
    examples = Path(__file__).resolve().parent.parent / "examples"
    images = [
        np.asarray(render_screenshot("Error 402: Payment declined")),
        decode_image((examples / "ct.dcm").read_bytes(), "application/dicom", {}, 40_000_000).rgb,
        decode_image((examples / "screenshot.png").read_bytes(), "image/png", {}, 40_000_000).rgb,
    ]
    expected = in_torch.encode_batch([in_torch.preprocess(rgb) for rgb in images])
    got = converted.encode_batch([converted.preprocess(rgb) for rgb in images])
    for a, b in zip(expected, got):
        assert a.grid == b.grid and float(torch.nn.functional.cosine_similarity(a.pooled, b.pooled, dim=0)) >= 0.999
        np.testing.assert_allclose(b.tokens.numpy(), a.tokens.numpy(), atol=1e-3)


def test_the_equivalence_check_refuses_different_features():
    from modalmesh.common.compiled import require_equivalent

    same = np.random.default_rng(0).normal(size=(3, 8))
    assert require_equivalent(same, same + 1e-7, "x") > 0.999999
    assert require_equivalent(np.zeros((1, 8)), np.zeros((1, 8)), "a flat image") == 1.0
    with pytest.raises(ValueError, match="cosine 0.0000 < 0.999.*engine torch"):
        require_equivalent(np.eye(2), np.eye(2)[::-1], "x")
    with pytest.raises(ValueError, match="engine torch"):
        require_equivalent(np.zeros((1, 8)), np.ones((1, 8)), "x")


def test_a_model_openvino_cannot_convert_is_refused_with_the_way_out(tmp_path, monkeypatch):
    # A module whose forward OpenVINO's converter cannot trace (it returns a Python
    # string): the service must say what to do, not fail with the converter's traceback.
    from modalmesh.common.compiled import compile_module

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return "not a tensor"

    monkeypatch.setenv("MODALMESH_CACHE_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="OpenVINO cannot convert this model .*engine torch"):
        compile_module(Untraceable(), torch.zeros(1, 3), "untraceable@0")
    assert not any((tmp_path / "openvino").glob("*")), "nothing is cached for a model that did not convert"


def test_openvino_models_keep_a_bounded_number_of_input_shapes(tmp_path, monkeypatch):
    # OpenVINO keeps what it prepared for each input shape (5000 shapes by default); the
    # encoders bound it (openvino_shapes). A model compiled with the bound runs inputs of
    # several shapes, one of them again after it was dropped, with the same numbers; an
    # unknown setting would be refused by OpenVINO here.
    from modalmesh.common.compiled import OpenVINOSettings, compile_module

    monkeypatch.setenv("MODALMESH_CACHE_DIR", str(tmp_path))
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    for shapes in (0, 1):
        model = compile_module(module, torch.zeros(2, 4), "bounded@0", OpenVINOSettings(threads=1, shapes=shapes))
        for rows in (1, 5, 1, 3):
            inputs = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
            with torch.inference_mode():
                expected = module(torch.from_numpy(inputs)).numpy()
            np.testing.assert_allclose(model(inputs)[model.output(0)], expected, atol=1e-5)


def test_the_ocr_models_on_openvino_keep_a_bounded_number_of_input_shapes():
    # rapidocr passes OpenVINO only the CPU settings it knows: the reader adds the bound to
    # the sessions it makes (and only to those), through rapidocr's own settings class.
    from rapidocr.inference_engine.openvino import main as rapidocr_openvino

    from modalmesh.vision.ocr import openvino_shapes_kept

    known = rapidocr_openvino.CPUConfig
    with openvino_shapes_kept(7):
        assert rapidocr_openvino.CPUConfig({"inference_num_threads": 1}).get_config() == {"INFERENCE_NUM_THREADS": "1", "CPU_RUNTIME_CACHE_CAPACITY": "7"}
    assert rapidocr_openvino.CPUConfig is known
    assert "CPU_RUNTIME_CACHE_CAPACITY" not in known({}).get_config()


def test_ocr_releases_openvinos_buffers_when_idle_and_reads_alike_after(monkeypatch):
    # OpenVINO keeps each OCR model's buffers at the largest input it ran; once OCR has been
    # idle for IDLE_RELEASE_S they are released, and the next read allocates them again.
    from modalmesh.vision import ocr

    monkeypatch.setattr(ocr, "IDLE_RELEASE_S", 0.2)
    reader = ocr.ScreenReader(engine="openvino")
    screen = np.asarray(render_screenshot("Error 402: Payment declined"))
    first = [line.text for line in reader.read(screen)]
    assert "Error 402: Payment declined" in first
    waited = time.monotonic() + 10
    while reader.releases == 0 and time.monotonic() < waited:
        time.sleep(0.05)
    assert reader.releases == 1
    monkeypatch.setattr(ocr, "IDLE_RELEASE_S", 3600.0)
    assert [line.text for line in reader.read(screen)] == first
    with reader._engine_turns.turn(None):  # a read under way: nothing is released
        assert reader.release_memory() is False
    assert reader.release_memory() is True and reader.releases == 2
