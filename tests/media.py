"""Real input files made in the tests: rendered screenshots, DICOM files, audio files."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def font(size: int):
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:  # no system font: Pillow's bundled scalable default
        return ImageFont.load_default(size=size)


def render_screenshot(error_text: str, size=(1024, 640), dark: bool = False) -> Image.Image:
    """An app window with a title bar, a distractor menu and an error dialog."""
    background, foreground = ((30, 30, 36), (230, 230, 230)) if dark else ((246, 246, 248), (20, 20, 20))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.rectangle([0, 0, width, 48], fill=(52, 103, 214))
    draw.text((20, 10), "ShopFast", fill=(255, 255, 255), font=font(24))
    draw.text((40, 80), "Home    Orders    Account", fill=foreground, font=font(20))
    box = [width // 2 - 330, height // 2 - 80, width // 2 + 330, height // 2 + 80]
    draw.rectangle(box, fill=(255, 236, 236), outline=(200, 40, 40), width=3)
    draw.text((box[0] + 30, box[1] + 40), error_text, fill=(170, 20, 20), font=font(26))
    draw.text((box[0] + 30, box[1] + 100), "OK", fill=(20, 20, 20), font=font(22))
    return image


def image_bytes(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def ct_dicom(hounsfield: np.ndarray, pixel_spacing=(0.7, 0.7), slope: float = 1.0, intercept: float = -1024.0, frames=None) -> bytes:
    """A CT image written as real DICOM through pydicom (stored = (HU - intercept) / slope)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("ct.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.BodyPartExamined = "CHEST"
    dataset.StudyDate = "20261122"
    stack = hounsfield if frames is None else np.stack(frames)
    stored = np.round((stack - intercept) / slope).astype(np.int16)
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
    dataset.PixelSpacing = [pixel_spacing[0], pixel_spacing[1]]
    dataset.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def phantom_hu(size: int = 128) -> np.ndarray:
    """Air outside, a soft-tissue body (40 HU), two lungs (-850 HU), a bone (700 HU)."""
    y, x = np.mgrid[0:size, 0:size]
    c = size / 2
    hu = np.full((size, size), -1000.0)
    hu[((x - c) / (0.45 * size)) ** 2 + ((y - c) / (0.35 * size)) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        hu[((x - c - side * 0.2 * size) / (0.13 * size)) ** 2 + ((y - c) / (0.22 * size)) ** 2 <= 1] = -850.0
    hu[(x - c) ** 2 + (y - c - 0.25 * size) ** 2 <= (0.05 * size) ** 2] = 700.0
    return hu


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def tone(seconds: float, rate: int, channels: int = 1, frequency: float = 440.0) -> np.ndarray:
    """A sine with a little white noise (so every mel band has energy above the
    quantisation floor of 8- and 16-bit files)."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).normal(0, 0.02, t.size)
    mono = (0.3 * np.sin(2 * np.pi * frequency * t) + noise).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)
