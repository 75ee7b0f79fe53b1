"""Answers in standard formats (router/reports.py): a FHIR R4 DiagnosticReport and a DICOM
Comprehensive SR for the CT task, a help-desk ticket for triage, typed findings; through a
real router and encoders on 127.0.0.1 with the example files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import pydicom
import pytest

from modalmesh.cli import main
from modalmesh.common import errors
from modalmesh.common.client import connect
from modalmesh.v1 import router_pb2, router_pb2_grpc
from tests.media import image_bytes, render_screenshot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def router(mesh):
    with connect(mesh.router.address) as channel:
        yield router_pb2_grpc.RouterStub(channel)


def ct_request(image: bytes, *formats) -> router_pb2.AnalyzeRequest:
    request = router_pb2.AnalyzeRequest(task="medical_report", text=(EXAMPLES / "record.txt").read_text(), image=router_pb2.MediaInput(data=image))
    request.image.parameters["window"] = "lung"
    request.options.report_formats.extend(formats)
    return request


def sr_numbers(dataset) -> dict[str, float]:
    """Every NUM content item of an SR, by concept name."""
    found = {}
    for item in dataset.get("ContentSequence", []):
        if item.ValueType == "NUM":
            found[item.ConceptNameCodeSequence[0].CodeMeaning] = float(item.MeasuredValueSequence[0].NumericValue)
        found.update(sr_numbers(item))
    return found


def test_the_ct_answer_as_fhir_and_as_a_dicom_sr(router):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    scan = (EXAMPLES / "ct.dcm").read_bytes()
    answer = router.Analyze(ct_request(scan, router_pb2.REPORT_FORMAT_FHIR_DIAGNOSTIC_REPORT, router_pb2.REPORT_FORMAT_DICOM_SR), timeout=120)
    findings = {f.key: f for f in answer.findings}
    assert findings["largest_diameter_mm"].HasField("number") and findings["largest_diameter_mm"].unit == "mm"
    assert findings["lesion_count"].number == float(findings["lesion_count"].value) and findings["lesion_count"].unit == "1"
    size = findings["largest_diameter_mm"].number
    fhir, sr = answer.reports
    assert (fhir.format, fhir.media_type) == (router_pb2.REPORT_FORMAT_FHIR_DIAGNOSTIC_REPORT, "application/fhir+json")
    report = DiagnosticReport.model_validate_json(fhir.content)  # a valid R4 resource
    assert report.status == "preliminary" and report.meta.tag[0].code == "research-use-only"
    diameters = [o for o in report.contained if o.code.coding and o.code.coding[0].code == "81827009"]
    assert len(diameters) == 1 and diameters[0].valueQuantity.value == pytest.approx(size) and diameters[0].valueQuantity.unit == "mm"
    assert report.conclusion.startswith("Findings consistent with a pulmonary")
    document = pydicom.dcmread(io.BytesIO(sr.content))  # round-trips through pydicom
    source = pydicom.dcmread(EXAMPLES / "ct.dcm", stop_before_pixels=True)
    assert document.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and document.StudyInstanceUID == source.StudyInstanceUID
    referenced = document.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sr_numbers(document)["Diameter"] == pytest.approx(size, abs=1e-3)
    assert "not for clinical use" in document.SeriesDescription


def test_the_ct_answer_outlines_the_measured_lesions_on_the_slice_as_read(router):
    """explain lists the measured lesions with their outlines; image_preview returns the DICOM
    slice as the vision service decodes it (same decoder, same window), which the console draws."""
    import numpy as np
    from PIL import Image

    from modalmesh.vision.decode import decode_image

    scan = (EXAMPLES / "ct.dcm").read_bytes()
    request = ct_request(scan)
    request.options.explain, request.options.image_preview = True, True
    answer = router.Analyze(request, timeout=120)
    findings = {f.key: f for f in answer.findings}
    lesions = answer.explanation.lesions
    assert len(lesions) == int(findings["lesion_count"].number) >= 1
    assert lesions[0].diameter_mm == pytest.approx(findings["largest_diameter_mm"].number, abs=0.05)
    preview = answer.explanation.image_preview
    source = pydicom.dcmread(EXAMPLES / "ct.dcm", stop_before_pixels=True)
    assert (preview.width, preview.height) == (source.Columns, source.Rows)
    spacing = float(source.PixelSpacing[1])
    for lesion in lesions:
        x0, y0, x1, y1 = lesion.box
        assert 0 <= x0 < x1 <= preview.width and 0 <= y0 < y1 <= preview.height
        assert (x1 - x0) * spacing == pytest.approx(lesion.diameter_mm, abs=0.3)
        assert lesion.side == ("left" if (x0 + x1) / 2 > preview.width / 2 else "right")  # the patient's left is the image's right
    shown = np.asarray(Image.open(io.BytesIO(preview.png)).convert("RGB"))
    assert np.array_equal(shown, decode_image(scan, "application/dicom", {"window": "lung"}, 10**7).rgb)
    request.options.image_preview = False
    assert not router.Analyze(request, timeout=120).explanation.HasField("image_preview")  # only when asked


def test_a_scan_that_was_not_dicom_gets_no_sr_and_says_why(router):
    from modalmesh.data.ct import make_phantom, windowed_png

    png = windowed_png(make_phantom(3, size=384).hounsfield, -600, 1500)
    answer = router.Analyze(ct_request(png, router_pb2.REPORT_FORMAT_DICOM_SR), timeout=120)
    findings = {f.key: f.value for f in answer.findings}
    assert not answer.reports and findings["report_error"].startswith("dicom_sr: a DICOM SR references the scan")
    request = ct_request(png)
    request.options.image_preview = True
    assert not router.Analyze(request, timeout=120).explanation.HasField("image_preview")  # a browser draws a PNG itself


def test_a_triage_answer_as_a_ticket_and_formats_a_task_does_not_write(router):
    screenshot = image_bytes(render_screenshot("Error 402: Payment declined"))
    request = router_pb2.AnalyzeRequest(task="screenshot_triage", text="my card was declined", image=router_pb2.MediaInput(data=screenshot))
    request.options.report_formats.append(router_pb2.REPORT_FORMAT_TICKET_JSON)
    answer = router.Analyze(request, timeout=120)
    ticket = json.loads(answer.reports[0].content)
    findings = {f.key: f.value for f in answer.findings}
    assert ticket["schema"] == "modalmesh.ticket/1" and ticket["confidence"] == pytest.approx(answer.confidence, abs=1e-4)
    assert ticket["category"] == (None if answer.abstained else answer.label) and ticket["priority"] == findings["priority"]
    assert ticket["evidence"]["message"] == "my card was declined" and ticket["reply"] == findings["reply"]
    assert "Error 402" in ticket["error_text"] and ticket["error_text_confidence"] == float(findings["error_text_confidence"])
    assert ticket["error_text_withheld"] == "" and ticket["evidence"]["status_line"] in ticket["error_text"]  # a familiar status message: stated
    request.options.report_formats[:] = [router_pb2.REPORT_FORMAT_FHIR_DIAGNOSTIC_REPORT]
    with pytest.raises(grpc.RpcError) as refused:
        router.Analyze(request, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and errors.field_violations(refused.value)[0][0] == "options.report_formats[0]"
    tasks = {t.name: t for t in router.ListTasks(router_pb2.ListTasksRequest(), timeout=10).tasks}
    assert list(tasks["screenshot_triage"].report_formats) == [router_pb2.REPORT_FORMAT_TICKET_JSON]


def test_the_command_line_writes_the_reports(mesh, tmp_path, capsys):
    out = tmp_path / "report.json", tmp_path / "report.dcm"
    command = ["analyze", "--router", mesh.router.address, "--task", "medical_report", "--image", str(EXAMPLES / "ct.dcm")]
    assert main([*command, "--image-param", "window=lung", "--fhir", str(out[0]), "--sr", str(out[1])]) == 0
    assert json.loads(out[0].read_text())["resourceType"] == "DiagnosticReport"
    assert pydicom.dcmread(out[1]).Modality == "SR"
