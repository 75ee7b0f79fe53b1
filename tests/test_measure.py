"""CT lung-lesion measurement (vision/measure.py): on the built-in phantoms, and as the
medical task's reported sizes (TaskSpec.finish). Through the service: test_vision_service.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalmesh.data.ct import make_phantom
from modalmesh.data.generate import PHANTOM_SIZE
from modalmesh.router.tasks import TASKS
from modalmesh.vision.measure import lesion_boxes, lesion_tags, measure_lung_lesions, parse_lesion_tags
from tests.media import phantom_hu


def measure(phantom):
    return measure_lung_lesions(phantom.hounsfield, (phantom.pixel_spacing_mm,) * 2)


@pytest.mark.parametrize("diameter", [6.0, 18.0, 33.0, 55.0])
def test_a_single_lesion_is_measured_within_a_millimetre(diameter):
    phantom = make_phantom(100 + int(diameter), size=PHANTOM_SIZE, lesion_count=1, diameter_mm=diameter)
    lesions = measure(phantom)
    assert len(lesions) == 1
    assert lesions[0].diameter_mm == pytest.approx(diameter, abs=1.0)
    assert lesions[0].side == phantom.side


def test_several_lesions_are_counted_and_normal_slices_have_none():
    counted, normals_with_lesions = 0, 0
    for seed in range(8):
        with_lesions = make_phantom(seed, size=PHANTOM_SIZE, lesion_count=2, diameter_mm=12.0)
        counted += len(measure(with_lesions)) == 2
        normals_with_lesions += bool(measure(make_phantom(1000 + seed, size=PHANTOM_SIZE, lesion_count=0)))
    assert counted >= 7  # two lesions may touch and be taken as one, rarely
    assert normals_with_lesions == 0  # vessels and ribs on the lung's edge are not lesions


def test_no_lung_no_spacing_or_too_large_is_not_measured():
    body = np.full((128, 128), 40.0, dtype=np.float32)  # a slice without lungs
    assert measure_lung_lesions(body, (0.7, 0.7)) is None
    lungs = phantom_hu(128).astype(np.float32)
    assert measure_lung_lesions(lungs, (0.7, 0.7)) == []
    assert measure_lung_lesions(lungs, (0.0, 0.7)) is None
    assert measure_lung_lesions(np.full((2100, 2100), -850.0, dtype=np.float32), (0.7, 0.7)) is None
    assert "not measured" in lesion_tags(None)["lesion_measurement"] and parse_lesion_tags(lesion_tags(None)) is None


def test_a_slice_turned_by_90_degrees_is_not_measured_and_says_why():
    """A lesion's side is the half of the image it lies in: on a slice turned by 90 degrees
    (no orientation tag to undo it) the lungs lie one above the other and "left" would be
    a guess. It is not measured; the unturned slice is."""
    from modalmesh.vision.measure import NOT_SIDE_BY_SIDE, measurement_tags

    phantom = make_phantom(31, size=PHANTOM_SIZE, lesion_count=1, diameter_mm=20.0)
    assert measure(phantom)[0].side == phantom.side
    turned = np.ascontiguousarray(np.rot90(phantom.hounsfield))
    assert measure_lung_lesions(turned, (phantom.pixel_spacing_mm,) * 2) is None
    tags = measurement_tags(turned, (phantom.pixel_spacing_mm,) * 2)
    assert tags["lesion_measurement"].endswith(f"not measured ({NOT_SIDE_BY_SIDE})") and "lung_fields" not in tags


def test_tags_round_trip():
    phantom = make_phantom(7, size=PHANTOM_SIZE, lesion_count=3, diameter_mm=20.0)
    lesions = measure(phantom)
    parsed = parse_lesion_tags(lesion_tags(lesions))
    assert parsed == [(lesion.diameter_mm, lesion.side) for lesion in lesions]
    assert parse_lesion_tags({"lesion_measurement": "hu-1", "lesion_count": "1", "lesion_diameters_mm": "x"}) is None
    assert parse_lesion_tags({"Modality": "CT"}) is None


def test_each_lesion_is_outlined_where_the_phantom_put_it():
    """The outline boxes (drawn by the console) sit on the phantom's lesions, as wide as measured."""
    phantom = make_phantom(11, size=PHANTOM_SIZE, lesion_count=2, diameter_mm=16.0)
    lesions = measure(phantom)
    boxes = lesion_boxes(lesion_tags(lesions))
    assert len(boxes) == len(lesions) == 2
    for lesion, (x0, y0, x1, y1) in zip(lesions, boxes):
        truth = min(phantom.lesions, key=lambda t: np.hypot(t.center_px[0] - (y0 + y1) / 2, t.center_px[1] - (x0 + x1) / 2))
        assert np.hypot(truth.center_px[0] - (y0 + y1) / 2, truth.center_px[1] - (x0 + x1) / 2) < 2.0  # pixels
        assert (x1 - x0) * phantom.pixel_spacing_mm == pytest.approx(lesion.diameter_mm, abs=0.3)
    assert lesion_boxes({}) == [] and lesion_boxes({"lesion_boxes_px": "1,2,x,4"}) == []


def test_the_medical_task_reports_measured_sizes_and_splits_nodule_from_mass_by_them():
    spec = TASKS["medical_report"]
    probabilities = torch.tensor([0.1, 0.6, 0.3])  # normal, nodule, mass
    raw = torch.tensor([1.0, 0.05, 1.0])  # the heads: one lesion, 5% of the width, right
    tags = {"Columns": "384", "PixelSpacing": "0.7\\0.7"}
    head_p, head_r = spec.finish(probabilities, raw.clone(), tags, {"largest_diameter_mm": 4.0})
    assert float(head_r[1]) == pytest.approx(0.05 * 384 * 0.7, rel=1e-5)  # the head's estimate, in mm
    measured = {**tags, **lesion_tags(measure(make_phantom(5, size=PHANTOM_SIZE, lesion_count=2, diameter_mm=44.0)))}
    p, r = spec.finish(probabilities, raw.clone(), measured, {"largest_diameter_mm": 4.0})
    assert float(r[1]) == pytest.approx(44.0, abs=1.0) and float(r[0]) == 2.0
    assert spec.labels[int(p.argmax())] == "mass" and float(p[2]) == pytest.approx(0.9, abs=1e-4)
    assert float(p[0]) == pytest.approx(0.1) and float(p.sum()) == pytest.approx(1.0)
    _, ignored = spec.finish(probabilities, raw.clone(), measured, {}, use_measured=False)
    assert float(ignored[1]) == pytest.approx(float(head_r[1]))


def test_the_measurement_is_evidence_for_or_against_each_label():
    """The labels' probabilities are updated by P(measurement outcome | label), counted on
    validation (Bayes' rule)."""
    from modalmesh.router.train import Example, measurement_evidence

    spec = TASKS["medical_report"]
    raw = torch.tensor([1.0, 0.05, 1.0])
    tags = {"Columns": "384", "PixelSpacing": "0.7\\0.7"}
    found = {**tags, **lesion_tags(measure(make_phantom(9, size=PHANTOM_SIZE, lesion_count=1, diameter_mm=12.0)))}
    nothing = {**tags, **lesion_tags([])}
    # A measurement misses a small nodule now and then, a mass never, and finds nothing on a normal slice.
    evidence = {"found": {"normal": 0.02, "nodule": 0.9, "mass": 0.99}, "none": {"normal": 0.98, "nodule": 0.1, "mass": 0.01}}
    sure_mass = torch.tensor([0.2, 0.1, 0.7])
    p, _ = spec.finish(sure_mass, raw.clone(), nothing, {}, evidence=evidence)
    assert float(p[0]) == pytest.approx(0.2 * 0.98 / (0.2 * 0.98 + 0.1 * 0.1 + 0.7 * 0.01), abs=1e-4)
    assert spec.labels[int(p.argmax())] == "normal"
    p, _ = spec.finish(torch.tensor([0.9, 0.05, 0.05]), raw.clone(), found, {}, evidence=evidence)
    assert float(p[0]) == pytest.approx(0.9 * 0.02 / (0.9 * 0.02 + 0.05 * 0.9 + 0.05 * 0.99), abs=1e-4)
    assert spec.labels[int(p.argmax())] == "nodule"  # 12 mm measured: the size rule says nodule
    assert float(p.sum()) == pytest.approx(1.0)
    p, _ = spec.finish(sure_mass, raw.clone(), tags, {}, evidence=evidence)  # nothing measured (a PNG): unchanged
    assert float(p[0]) == pytest.approx(0.2)
    p, _ = spec.finish(sure_mass, raw.clone(), nothing, {}, evidence={"found": 50.0, "none": 0.02})  # one ratio, lesion vs rest
    assert float(p[0]) == pytest.approx(1 / (1 + 4 * 0.02), abs=1e-4)

    def example(label, tags):
        return Example({}, spec.labels.index(label), torch.zeros(3), torch.zeros(3, dtype=torch.bool), tags, torch.zeros(3))

    examples = [example("nodule", found)] * 9 + [example("nodule", nothing)] + [example("normal", nothing)] * 10
    counted = measurement_evidence(spec, examples + [example("normal", tags)])  # the unmeasured one does not count
    assert counted["found"]["nodule"] == pytest.approx(10 / 12, rel=1e-3)
    assert counted["none"]["normal"] == pytest.approx(11 / 12, rel=1e-3)
    assert counted["found"]["mass"] == pytest.approx(0.5)  # never seen: add-one smoothing says nothing
    assert measurement_evidence(spec, [example("normal", tags)]) == {}


def test_the_report_says_where_the_sizes_come_from_and_which_lungs():
    from modalmesh.router.tasks import Answer, Evidence, write_report

    answer = Answer("nodule", 0.9, 0.2, {"normal": 0.05, "nodule": 0.9, "mass": 0.05}, {"lesion_count": 2.0, "largest_diameter_mm": 12.3, "side": -1.0})
    both = {"Modality": "CT", "PixelSpacing": "0.7\\0.7", **lesion_tags([])}
    both.update({"lesion_count": "2", "lesion_diameters_mm": "12.3\\6.1", "lesion_sides": "left\\right"})
    description, findings, _ = write_report(answer, Evidence(image_tags=both))
    assert "in both lungs; the largest is 12.3 mm, left (measured on the slice in Hounsfield units)" in description
    assert findings["side"] == "left" and "not for clinical use" in description.lower()
    # Not measured (a PNG without its window): no count, size or side; the heads' size only as
    # an estimate with its validation error, and only where that error is known.
    unmeasured = {"PixelSpacing": "0.7\\0.7", "colour": "no"}
    description, findings, _ = write_report(answer, Evidence(image_tags=unmeasured, estimate_error={"largest_diameter_mm": 5.7}))
    assert {"lesion_count", "largest_diameter_mm", "side"}.isdisjoint(findings)
    assert findings["estimated_largest_diameter_mm"] == "12.3" and findings["estimate_error_mm"] == "5.7"
    assert "not assessable" in description and "Estimated from image features, not measured" in description
    _, findings, _ = write_report(answer, Evidence(image_tags=unmeasured))
    assert "estimated_largest_diameter_mm" not in findings


def test_the_report_gives_no_size_it_does_not_have_and_says_why_nothing_was_measured():
    """An all-water or all-air CT slice (no lung found) was reported as "1 round soft-tissue
    lesion in the right lung; the largest is 0.0 mm", and an unmeasured normal as "the
    lung fields are clear"."""
    from modalmesh.router.tasks import Answer, Evidence, write_report

    unmeasured = {"Modality": "CT", "PixelSpacing": "0.7\\0.7", **lesion_tags(None)}
    nodule = Answer("nodule", 0.7, 0.6, {"normal": 0.2, "nodule": 0.7, "mass": 0.1}, {"lesion_count": 1.0, "largest_diameter_mm": -0.4, "side": 1.0})
    description, findings, reply = write_report(nodule, Evidence(image_tags=unmeasured, estimate_error={"largest_diameter_mm": 5.0}))
    assert {"lesion_count", "largest_diameter_mm", "side", "estimated_largest_diameter_mm"}.isdisjoint(findings)
    assert " mm" not in description.replace("pixel spacing 0.7\\0.7 mm", "")
    assert "The slice was not measured (no lung found" in description
    normal = Answer("normal", 0.9, 0.2, {"normal": 0.9, "nodule": 0.05, "mass": 0.05}, {})
    description, findings, _ = write_report(normal, Evidence(image_tags=unmeasured))
    assert "lung fields are clear" not in description and "not measured (no lung found" in description
    measured_clear = {"Modality": "CT", "PixelSpacing": "0.7\\0.7", **lesion_tags([])}
    description, _, _ = write_report(normal, Evidence(image_tags=measured_clear))
    assert "The lung fields are clear." in description and "not measured" not in description


def test_tissue_the_lung_hull_closes_over_is_not_a_lesion():
    """Lungs that curve in around the heart: the convex hull that closes a lesion's bite in
    the lung's edge also closed over the heart, which was measured as a mass on every
    normal slice of the held-out anatomy."""
    for seed in (11, 12, 13):
        normal = make_phantom(seed, size=512, lesion_count=0, spacing_mm=(0.5, 1.0), noise_hu=(20.0, 45.0), heart=True)
        assert measure_lung_lesions(normal.hounsfield, (normal.pixel_spacing_mm,) * 2) == []
    sick = make_phantom(21, size=512, lesion_count=1, diameter_mm=20.0, spacing_mm=(0.5, 1.0), noise_hu=(20.0, 45.0), heart=True)
    lesions = measure_lung_lesions(sick.hounsfield, (sick.pixel_spacing_mm,) * 2)
    assert len(lesions) == 1 and lesions[0].diameter_mm == pytest.approx(20.0, abs=1.0) and lesions[0].side == sick.side


@pytest.mark.parametrize("bits", [8, 16])
def test_a_noisy_lung_window_png_is_measured_as_its_ct(bits):
    # Soft tissue at 40 HU with 45 HU of noise pokes above the lung window's top (150 HU) in
    # about one pixel of a hundred: those clipped specks are tissue, not bone, or the lesion
    # is riddled with holes and measured as many small ones.
    from modalmesh.data.ct import windowed_png
    from modalmesh.vision.decode import decode_image

    phantom = make_phantom(7, size=512, lesion_count=1, diameter_mm=48.0, spacing_mm=(0.5, 0.55), noise_hu=(45.0, 45.0))
    png = windowed_png(phantom.hounsfield, -600, 1500, bits=bits)
    decoded = decode_image(png, "image/png", {"pixel_spacing": f"{phantom.pixel_spacing_mm}", "window": "lung"}, 4_000_000)
    lesions = measure_lung_lesions(decoded.hounsfield, (phantom.pixel_spacing_mm,) * 2)
    assert [round(lesion.diameter_mm) for lesion in lesions] == [round(lesion.diameter_mm) for lesion in measure(phantom)]
    assert len(lesions) == 1 and lesions[0].diameter_mm == pytest.approx(phantom.largest_mm, abs=1.0)


@pytest.mark.parametrize("seed, count, diameter", [(1353417275, 2, 43.9), (589157686, 1, 36.6), (234707846, 1, 26.4)])
def test_a_lesion_against_the_hearts_bulge_is_measured_without_the_heart(seed, count, diameter):
    # The held-out anatomy's heart bulges into the left lung's hull; a lesion touching it
    # makes one solid region with it, which as a whole is ringed by air. Judged lesion by
    # lesion, the heart's part (walled by the mediastinum) and its small remnants are not lesions.
    phantom = make_phantom(seed, size=512, lesion_count=count, diameter_mm=diameter, spacing_mm=(0.5, 1.0), noise_hu=(20.0, 45.0), heart=True)
    lesions = measure(phantom)
    assert len(lesions) == count
    assert lesions[0].diameter_mm == pytest.approx(phantom.largest_mm, abs=1.0)
