"""Chest CT phantoms in Hounsfield units, written as real CT DICOM.

An axial slice: air outside (-1000 HU); a body ellipse of soft tissue (~40 HU) with a
fat rim (~-100 HU); two lung fields (~-850 HU) with vessels as small bright dots; a
spine and ribs (~+700 HU); 0-3 round soft-tissue lesions (30-60 HU) of 4-60 mm inside
the lungs; Gaussian noise (sigma 10-30 HU). Pixel spacing 0.6-0.9 mm. Deterministic by
seed. Labels: normal (no lesion), nodule (largest <= 30 mm), mass (largest > 30 mm).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Lesion:
    center_px: tuple[float, float]  # (row, column)
    diameter_mm: float
    side: str  # "left" or "right" (patient's side: image right is patient left)


@dataclass
class Phantom:
    hounsfield: np.ndarray  # [N, N] float32
    pixel_spacing_mm: float
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def label(self) -> str:
        if not self.lesions:
            return "normal"
        return "mass" if self.largest_mm > 30.0 else "nodule"

    @property
    def largest_mm(self) -> float:
        return max((lesion.diameter_mm for lesion in self.lesions), default=0.0)

    @property
    def side(self) -> str:
        if not self.lesions:
            return "none"
        return max(self.lesions, key=lambda lesion: lesion.diameter_mm).side


def make_phantom(
    seed: int,
    size: int = 256,
    lesion_count: int | None = None,
    diameter_mm: float | None = None,
    spacing_mm: tuple[float, float] = (0.6, 0.9),
    noise_hu: tuple[float, float] = (10.0, 30.0),
    heart: bool = False,
) -> Phantom:
    """`heart`: another anatomy (squarer lungs, a heart and an aorta between them), for
    held-out sets; the defaults give the training phantoms, draw for draw."""
    rng = np.random.default_rng(seed)
    spacing = float(rng.uniform(*spacing_mm))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2, size / 2
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    body_a, body_b = size * rng.uniform(0.42, 0.47), size * rng.uniform(0.30, 0.36)
    body = ((x - cx) / body_a) ** 2 + ((y - cy) / body_b) ** 2
    hu[body <= 1.0] = -100.0  # fat rim
    hu[((x - cx) / (body_a - 6)) ** 2 + ((y - cy) / (body_b - 6)) ** 2 <= 1.0] = 40.0  # soft tissue
    lungs = np.zeros((size, size), dtype=bool)
    lung_a, lung_b = body_a * 0.38, body_b * 0.72
    power = 2.6 if heart else 2.0  # a squarer outline for the other anatomy
    for side in (-1, 1):
        lung_cx = cx + side * body_a * 0.48
        lungs |= np.abs((x - lung_cx) / lung_a) ** power + np.abs((y - cy + body_b * 0.05) / lung_b) ** power <= 1.0
    if heart:  # the heart (to the patient's left, anterior) and the aorta take room from the lungs
        organ = ((x - cx - body_a * 0.1) / (body_a * 0.27)) ** 2 + ((y - cy + body_b * 0.12) / (body_b * 0.36)) ** 2 <= 1.0
        organ |= (x - cx + body_a * 0.05) ** 2 + (y - cy - body_b * 0.35) ** 2 <= (size * 0.035) ** 2
        lungs &= ~organ
        hu[organ] = 45.0
    hu[lungs] = -850.0
    # Spine (posterior, below the centre) and ribs (a dotted ring just inside the body).
    hu[(x - cx) ** 2 + (y - cy - body_b * 0.7) ** 2 <= (size * 0.045) ** 2] = 700.0
    for angle in np.linspace(0, 2 * np.pi, 18, endpoint=False):
        rx, ry = cx + (body_a - 12) * np.cos(angle), cy + (body_b - 12) * np.sin(angle)
        hu[(x - rx) ** 2 + (y - ry) ** 2 <= (size * 0.012) ** 2] = 700.0
    # Vessels: small bright dots inside the lungs.
    lung_rows, lung_cols = np.nonzero(lungs)
    for index in rng.choice(lung_rows.size, size=40, replace=False):
        r = rng.uniform(0.8, 1.8)
        hu[(x - lung_cols[index]) ** 2 + (y - lung_rows[index]) ** 2 <= r**2] = float(rng.uniform(20, 60))
    # Lesions, fully inside a lung.
    count = int(rng.integers(0, 4)) if lesion_count is None else lesion_count
    lesions = []
    for _ in range(count):
        diameter = float(rng.uniform(4, 60)) if diameter_mm is None else float(diameter_mm)
        radius_px = diameter / spacing / 2
        inner = np.argwhere(lungs)
        best: tuple[float, int, int, np.ndarray] | None = None  # the most contained of up to 200 random centres: a lesion outside the lung would be invisible
        for _attempt in range(200):
            row, col = inner[rng.integers(inner.shape[0])]
            disc = (x - col) ** 2 + (y - row) ** 2 <= radius_px**2
            inside = float(lungs[disc].mean())
            if best is None or inside > best[0]:
                best = (inside, row, col, disc)
            if inside > 0.97:
                break
        assert best is not None  # 200 attempts were made
        _, row, col, disc = best
        hu[disc] = float(rng.uniform(30, 60))
        lesions.append(Lesion((float(row), float(col)), diameter, "left" if col > cx else "right"))
    lesions.sort(key=lambda lesion: -lesion.diameter_mm)
    hu += rng.normal(0, rng.uniform(*noise_hu), size=hu.shape).astype(np.float32)
    return Phantom(hu.astype(np.float32), spacing, lesions)


def windowed_png(hounsfield: np.ndarray, center: float, width: float, bits: int = 8) -> bytes:
    """A CT slice as a greyscale PNG the way a viewer exports it: HU in the window
    [center - width/2, center + width/2] mapped to black..white, the rest clipped."""
    import io

    from PIL import Image

    levels = 255 if bits == 8 else 65535
    grey = np.clip((hounsfield - (center - width / 2)) / width, 0.0, 1.0) * levels + 0.5
    image = Image.fromarray(grey.astype(np.uint8)) if bits == 8 else Image.fromarray(grey.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_ct_dicom(
    hounsfield: np.ndarray | None,
    pixel_spacing=(0.7, 0.7),
    slope: float = 1.0,
    intercept: float = -1024.0,
    frames=None,
    body_part: str = "CHEST",
    uid_seed: str | None = None,
    orientation: tuple[float, ...] | None = None,
) -> bytes:
    """A CT image as real DICOM through pydicom (stored = (HU - intercept) / slope).
    With `uid_seed` the instance UID, and so the file, is the same on every run.
    `orientation`: ImageOrientationPatient (six direction cosines) to write, the pixels
    being stored as they are given; None writes no such tag."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed]) if uid_seed else generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("ct.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.BodyPartExamined = body_part
    dataset.StudyDate = "20261122"
    # The study and patient a real CT file belongs to (a DICOM SR about it references them).
    dataset.StudyInstanceUID = generate_uid(entropy_srcs=[f"{uid_seed}/study"]) if uid_seed else generate_uid()
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=[f"{uid_seed}/series"]) if uid_seed else generate_uid()
    dataset.StudyTime, dataset.StudyID, dataset.AccessionNumber, dataset.ReferringPhysicianName = "120000", "1", "", ""
    dataset.SeriesNumber, dataset.InstanceNumber = 1, 1
    dataset.PatientName, dataset.PatientID, dataset.PatientBirthDate, dataset.PatientSex = "Phantom^Synthetic", "PHANTOM", "", "O"
    if hounsfield is None and frames is None:
        raise ValueError("write_ct_dicom needs the slice or its frames")
    stack: np.ndarray = np.stack(frames) if frames is not None else np.asarray(hounsfield)
    stored = np.clip(np.round((stack - intercept) / slope), -32768, 32767).astype(np.int16)
    dataset.Rows, dataset.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        dataset.NumberOfFrames = stored.shape[0]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.RescaleSlope = slope
    dataset.RescaleIntercept = intercept
    dataset.PixelSpacing = [float(pixel_spacing[0]), float(pixel_spacing[1])]
    if orientation is not None:
        dataset.ImageOrientationPatient = [float(v) for v in orientation]
    dataset.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
