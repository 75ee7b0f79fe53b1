"""Answers in the formats other systems read: a FHIR R4 DiagnosticReport and a DICOM
Comprehensive SR for the CT task, a help-desk ticket for triage; typed findings.

Each builder takes the answer (router.proto's AnalyzeResponse, findings filled) and the
evidence it came from, and returns the report's bytes. Both medical formats say they are
for research use, not clinical use, and state only what the answer states: the measured
count, size and side where the slice was measured, nothing of lesions otherwise.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

from modalmesh.router.tasks import NOT_FOR_CLINICAL_USE, Evidence
from modalmesh.v1 import router_pb2

FHIR = "fhir"
DICOM_SR = "dicom_sr"
TICKET = "ticket"
FORMATS = {  # router.proto's ReportFormat -> (name, media type)
    router_pb2.REPORT_FORMAT_FHIR_DIAGNOSTIC_REPORT: (FHIR, "application/fhir+json"),
    router_pb2.REPORT_FORMAT_DICOM_SR: (DICOM_SR, "application/dicom"),
    router_pb2.REPORT_FORMAT_TICKET_JSON: (TICKET, "application/json"),
}


def build(name: str, response, evidence: Evidence, scan: bytes) -> bytes:
    """The report `name` (FORMATS) for an answer; ValueError when it cannot be written."""
    if name == FHIR:
        return fhir_diagnostic_report(response, evidence)
    if name == DICOM_SR:
        return dicom_sr(response, evidence, scan)
    return ticket(response, evidence)


# Codes used, each with its system's meaning (only where the code is standard and sure).
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CT_CHEST = (LOINC, "24627-2", "CT Chest")
DIAMETER = (SNOMED, "81827009", "Diameter")
LATERALITY = {"left": (SNOMED, "7771000", "Left"), "right": (SNOMED, "24028007", "Right")}
UNITS = {"mm": "mm", "count": "1"}


def typed(key: str, value: str) -> tuple[float | None, str]:
    """A finding's value as a number and its UCUM unit, where it is a number."""
    try:
        number = float(value)
    except ValueError:
        return None, ""
    if key.endswith("_mm"):
        return number, "mm"
    if key.endswith("_count"):
        return number, "1"
    return number, ""


def ticket(response, evidence: Evidence) -> bytes:
    """A help-desk ticket (docs/api.md "Reports"): what a ticketing system ingests."""
    findings = {f.key: f.value for f in response.findings}
    document = {
        "schema": "modalmesh.ticket/1",
        "request_id": response.request_id,
        "category": None if response.abstained else response.label,
        "best_guess": response.top_k[0].label if response.top_k else response.label,
        "confidence": round(float(response.confidence), 4),
        "needs_review": bool(response.abstained),
        "review_reason": response.abstain_reason,
        "priority": findings.get("priority", "normal"),
        "error_text": findings.get("error_text", ""),
        "error_text_confidence": float(findings["error_text_confidence"]) if "error_text_confidence" in findings else None,
        "error_text_withheld": findings.get("error_text_withheld", ""),
        "next_steps": findings.get("next_steps", ""),
        "reply": findings.get("reply", ""),
        "evidence": {
            "message": evidence.text.strip(),
            "screen_text": evidence.screen_lines,
            "status_line": evidence.key_line,
            "transcript": evidence.transcript,
        },
        "model_version": response.model_version,
    }
    return json.dumps(document, indent=2).encode()


def _coding(code: tuple[str, str, str]) -> dict[str, str]:
    system, value, display = code
    return {"system": system, "code": value, "display": display}


def fhir_diagnostic_report(response, evidence: Evidence) -> bytes:
    """A FHIR R4 DiagnosticReport (preliminary; research use) with contained Observations
    for the measured findings; validated by fhir.resources before it is returned."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport  # R4B: the R4 release fhir.resources models

    findings = {f.key: f.value for f in response.findings}
    issued = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    observations: list[dict[str, Any]] = []

    def observe(name: str, code: dict, value: dict) -> None:
        observations.append(
            {
                "resourceType": "Observation",
                "id": f"obs-{len(observations) + 1}",
                "status": "preliminary",
                "code": code,
                **value,
                "note": [{"text": f"{name}, measured on the CT slice in Hounsfield units. {NOT_FOR_CLINICAL_USE}"}],
            }
        )

    if "largest_diameter_mm" in findings:
        observe(
            "Largest lesion diameter",
            {"coding": [_coding(DIAMETER)], "text": "Largest lesion diameter"},
            {"valueQuantity": {"value": float(findings["largest_diameter_mm"]), "unit": "mm", "system": "http://unitsofmeasure.org", "code": "mm"}},
        )
    if "lesion_count" in findings:
        observe("Lesion count", {"text": "Number of pulmonary lesions measured"}, {"valueInteger": int(findings["lesion_count"])})
    if findings.get("side") in LATERALITY:
        side = {"valueCodeableConcept": {"coding": [_coding(LATERALITY[findings["side"]])]}}
        observe("Laterality of the largest lesion", {"text": "Laterality of the largest lesion"}, side)
    conclusion = response.description.split("Impression:", 1)[-1].strip() if "Impression:" in response.description else response.description
    document: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": response.request_id or uuid.uuid4().hex,
        "meta": {"tag": [{"system": "urn:modalmesh", "code": "research-use-only", "display": NOT_FOR_CLINICAL_USE}]},
        "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [_coding(CT_CHEST)], "text": "CT chest, one axial slice"},
        "issued": issued,
        "contained": observations,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": conclusion[:4000],
    }
    if not response.abstained:
        document["conclusionCode"] = [{"text": f"{response.label} (confidence {response.confidence:.2f}, model {response.model_version})"}]
    report = DiagnosticReport.model_validate(document)  # raises if it is not a valid R4 resource
    return report.model_dump_json(indent=2).encode()


def dicom_sr(response, evidence: Evidence, scan: bytes) -> bytes:
    """A DICOM Comprehensive SR (TID 1500 measurement report, built with highdicom) about
    the slice in `scan` (its DICOM bytes): one measurement group for the largest measured
    lesion (its diameter, finding type, finding site and laterality), referencing the
    slice's SOP Instance UID; none when nothing was measured. ValueError when `scan` is
    not DICOM (a PNG has no UIDs to reference)."""
    import io

    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    try:
        source = pydicom.dcmread(io.BytesIO(scan), stop_before_pixels=True)
        source.SOPInstanceUID, source.SOPClassUID, source.StudyInstanceUID  # noqa: B018  # what the SR references
    except Exception:  # not DICOM, or a DICOM without its UIDs
        raise ValueError("a DICOM SR references the scan it reports on: send the scan as DICOM (with its UIDs)") from None
    findings = {f.key: f.value for f in response.findings}
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="ModalMesh", manufacturer_name="ModalMesh", model_name=response.model_version[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    groups = []
    if "largest_diameter_mm" in findings:
        laterality = {"left": codes.SCT.Left, "right": codes.SCT.Right}.get(findings.get("side", ""))
        sites = [hd.sr.FindingSite(anatomic_location=codes.SCT.Lung, laterality=laterality)]
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="largest lesion"),
                finding_type=codes.SCT.Nodule if float(findings["largest_diameter_mm"]) <= 30.0 else codes.SCT.Mass,
                finding_sites=sites,
                measurements=[hd.sr.Measurement(name=codes.SCT.Diameter, value=float(findings["largest_diameter_mm"]), unit=codes.UCUM.Millimeter)],
                source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)],
            )
        )
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups or None)
    document = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ModalMesh",
        is_complete=True,
        is_final=False,  # preliminary: research use
    )
    document.SeriesDescription = NOT_FOR_CLINICAL_USE[:64]
    buffer = io.BytesIO()
    document.save_as(buffer)
    return buffer.getvalue()
