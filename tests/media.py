"""Real input files made in the tests: rendered screenshots, DICOM files, audio files."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def render_screenshot(error_text: str, size=(1024, 640), dark: bool = False) -> Image.Image:
    from modalmesh.data.screens import render_screenshot as render

    return render(error_text, size=size, dark=dark)


def image_bytes(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    from modalmesh.data.screens import png_bytes

    return png_bytes(image, fmt, **save)


def ct_dicom(hounsfield, pixel_spacing=(0.7, 0.7), slope: float = 1.0, intercept: float = -1024.0, frames=None, orientation=None) -> bytes:
    from modalmesh.data.ct import write_ct_dicom

    return write_ct_dicom(hounsfield, pixel_spacing, slope, intercept, frames, orientation=orientation)


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
