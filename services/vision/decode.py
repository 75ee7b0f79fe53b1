"""Image decoding with guard rails: PNG, JPEG, WebP, AVIF, GIF (its first frame), BMP, TIFF
(Pillow) and DICOM (pydicom).

Every image becomes an RGB uint8 array plus tags. Checks happen before any pixel is
decoded: the bytes' signature must match the declared media type, and the pixel count
(read from the header) must be within `max_pixels`, so decompression bombs are refused
cheaply. Truncated or corrupt files, zero-size images and unsupported encodings are
INVALID_ARGUMENT with the reason.

DICOM: stored values become Hounsfield units for CT (RescaleSlope/RescaleIntercept) and
are windowed (preset "lung", "soft_tissue", "bone", or the file's own
WindowCenter/WindowWidth); a PNG scan sent with "pixel_spacing" and the "window" it
was exported with (a preset or "center/width") gets its densities back from its grey
levels, so it is measured like a CT slice. MR, CR, DX and others are scaled between the 0.5th and
99.5th percentiles. MONOCHROME1 is inverted. Multi-frame files take the frame named by
the "frame" parameter (default the middle one). PixelSpacing and the tags a report
needs travel as side outputs.

Orientation: with ImageOrientationPatient the slice's plane is reported ("plane": axial,
coronal, sagittal or oblique), and an axial slice stored in another orientation (a prone
or feet-first scan, a mirrored export) is turned to the radiological display the
measurement and the models assume: the patient's left on the image's right, anterior at
the top. Without the tag, that display is assumed.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np

from modalmesh.common import errors
from modalmesh.common.media import sniff_image

log = logging.getLogger(__name__)

IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp", "image/avif", "image/gif", "image/bmp", "image/tiff", "application/dicom")

# Window presets in Hounsfield units: (center, width).
CT_WINDOWS = {"lung": (-600.0, 1500.0), "soft_tissue": (40.0, 400.0), "bone": (400.0, 1800.0)}
REPORT_TAGS = ("Modality", "BodyPartExamined", "StudyDate", "StudyDescription", "PhotometricInterpretation", "Rows", "Columns")


@dataclass
class DecodedImage:
    rgb: np.ndarray  # [H, W, 3] uint8
    tags: dict[str, str] = field(default_factory=dict)
    hounsfield: np.ndarray | None = None  # [H, W] float32, CT only


def pixel_count(data: bytes, media_type: str) -> int:
    """Width x height from the header alone, without decoding; 0 when the header
    cannot be read (decode_image then says what is wrong)."""
    try:
        if media_type == "application/dicom":
            import pydicom

            dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return max(0, int(dataset.get("Rows", 0)) * int(dataset.get("Columns", 0)))  # one frame is decoded
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            width, height = Image.open(io.BytesIO(data)).size  # the header only
        return width * height
    except Exception:  # malformed: decode_image reports it
        return 0


def decode_image(data: bytes, media_type: str, parameters: dict[str, str], max_pixels: int) -> DecodedImage:
    if not data:
        raise errors.invalid_argument("payload", "the image is empty (0 bytes)")
    actual = sniff_image(data)
    if actual != media_type:
        found = f"look like {actual}" if actual else "match no supported image format"
        raise errors.invalid_argument("header.media_type", f"declared {media_type} but the bytes {found}")
    if media_type == "application/dicom":
        return _decode_dicom(data, parameters, max_pixels)
    if media_type == "image/jpeg":
        check_jpeg_scans(data)
    decoded = _decode_raster(data, max_pixels)
    decoded.tags["colour"] = "yes" if is_colour(decoded.rgb) else "no"
    if "pixel_spacing" in parameters:  # a PNG of a scan, with its spacing stated by the caller
        decoded.tags["PixelSpacing"] = _pixel_spacing(parameters["pixel_spacing"])
        if "window" in parameters:  # ... and the CT window its grey levels show: densities again
            decoded.hounsfield, note = _stated_window_hounsfield(data, decoded, parameters["window"])
            decoded.tags["window"] = note
    return decoded


# A progressive JPEG is decoded once per scan: an ordinary one has about ten; a 551 KiB file
# of thousands of tiny scans takes 17.7 CPU-seconds, and the cost grows with the count.
MAX_JPEG_SCANS = 64


def check_jpeg_scans(data: bytes) -> None:
    """Refuse a JPEG with more than MAX_JPEG_SCANS scans before decoding it (start-of-scan
    markers, 0xFFDA, cannot occur inside the entropy-coded data, where 0xFF is stuffed)."""
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise errors.invalid_argument("payload", f"the JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are decoded (re-save it as a baseline JPEG or PNG)")


COLOUR_SPREAD = 8.0  # mean |R-G| + |G-B| (grey levels) above which an image is in colour, not greyscale


def is_colour(rgb: np.ndarray) -> bool:
    """Whether the image holds colour (a photo, a screenshot) rather than grey levels (a scan
    exported to PNG or JPEG), judged on at most about 256x256 pixels of it."""
    step = max(1, int(max(rgb.shape[0], rgb.shape[1]) // 256))
    sample = rgb[::step, ::step].astype(np.int16)
    spread = np.abs(sample[..., 0] - sample[..., 1]) + np.abs(sample[..., 1] - sample[..., 2])
    return float(spread.mean()) > COLOUR_SPREAD


def _window(value: str) -> tuple[float, float]:
    """A preset name or "center/width" in HU (a DICOM's own window, "file", is read by _ct_window)."""
    if value in CT_WINDOWS:
        return CT_WINDOWS[value]
    try:
        center, width = (float(v) for v in value.split("/"))
    except ValueError:
        center, width = 0.0, 0.0
    if not width > 0:
        raise errors.invalid_argument(
            "header.parameters.window", f"{value!r} is not one of {', '.join(CT_WINDOWS)}, center/width in HU (width > 0), or (DICOM only) file"
        )
    return center, width


def _stated_window_hounsfield(data: bytes, decoded: DecodedImage, value: str) -> tuple[np.ndarray | None, str]:
    """A greyscale scan's densities from the window it was exported with: grey level g in
    [0, 1] is center - width/2 + g * width HU. Patches at the top of the range are clipped
    and could be anything brighter, so they count as bone (not measured as lesions). None
    when the window cannot show both the lungs' air and soft tissue (then nothing is
    measured and the model's own estimates stand)."""
    from PIL import Image

    from modalmesh.vision.measure import AIR_HU, BONE_HU

    center, width = _window(value)
    low, high = center - width / 2, center + width / 2
    note = f"{center:g}/{width:g}"
    if low > AIR_HU - 100 or high < 100:
        return None, f"{note} (too narrow to measure lesions: it must show {AIR_HU - 100:g} to 100 HU)"
    if decoded.tags.get("mode") in ("I;16", "I;16B", "I;16L"):  # the RGB copy was rescaled to 8 bits: read the levels
        grey, levels = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32), 65535.0
    else:  # 8-bit: the decoded copy's luminance (a grey image's own levels)
        grey, levels = decoded.rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32), 255.0
    hounsfield = low + grey / levels * width
    if high < BONE_HU:
        hounsfield[_clipped_bone(grey >= levels - 0.5)] = BONE_HU + 1.0
    return hounsfield.astype(np.float32), note


def _clipped_bone(clipped: np.ndarray) -> np.ndarray:
    """The clipped pixels that are bone: those in clipped patches at least 3x3 pixels
    across. Single clipped pixels and specks are soft tissue's noise above the window's
    top (a lesion at 40 HU with 40 HU of noise clips one pixel in a hundred at 150 HU);
    counted as bone they would riddle a lesion with holes and split it into many."""
    from scipy import ndimage

    solid = ndimage.binary_opening(clipped, structure=np.ones((3, 3), dtype=bool))
    return ndimage.binary_propagation(solid, mask=clipped)


def _pixel_spacing(value: str) -> str:
    """`0.7` or `0.7\\0.7` (row\\column, mm) to the DICOM form; (0, 10] mm."""
    parts = value.replace("/", "\\").split("\\")
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or not all(0 < n <= 10 for n in numbers):
        raise errors.invalid_argument("header.parameters.pixel_spacing", f"{value!r} is not one or two spacings in mm, each in (0, 10]")
    row, column = (numbers * 2)[:2]
    return f"{row:g}\\{column:g}"


# ---------------------------------------------------------------------------- raster


def _decode_raster(data: bytes, max_pixels: int) -> DecodedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Our own pixel check below runs first; Pillow's bomb warning would only
            # repeat it (its hard error, past 179 MP, still applies).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width == 0 or height == 0:
                raise errors.invalid_argument("payload", f"the image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise errors.invalid_argument("payload", f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}")
            image.load()
            upright = ImageOps.exif_transpose(image)
            tags = {"width": str(upright.width), "height": str(upright.height), "mode": upright.mode}
            return DecodedImage(rgb=_to_rgb(upright), tags=tags)
    except errors.ServiceError:
        raise
    except Image.DecompressionBombError as exc:
        raise errors.invalid_argument("payload", f"the image is over the limit of {max_pixels} pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, RuntimeError, struct.error, zlib.error) as exc:  # RuntimeError: AVIF's
        log.info("undecodable image: %s: %s", type(exc).__name__, exc)
        raise errors.invalid_argument("payload", "cannot decode the image: it is truncated, corrupt or not the format it says") from None


def _to_rgb(image) -> np.ndarray:
    """Any Pillow mode to RGB uint8: 16-bit and float scaled, palette expanded, alpha
    composited on white, CMYK converted."""
    from PIL import Image

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = np.zeros_like(values) if high <= low else (values - low) / (high - low) * 255.0
        grey = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    # An RGB image as it is: convert("RGB") would copy it once more (160 MB at 40 MP).
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


# ---------------------------------------------------------------------------- DICOM


# What reading a malformed DICOM raises, from pydicom, numpy and Python itself (a tag of the
# wrong type, a deflated body that is not deflate, a sequence nested 500 deep).
MALFORMED_DICOM = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    EOFError,
    OSError,
    RecursionError,
    NotImplementedError,
    zlib.error,
    struct.error,
    ArithmeticError,
)


def _decode_dicom(data: bytes, parameters: dict[str, str], max_pixels: int) -> DecodedImage:
    """Every failure reading the file is the caller's: INVALID_ARGUMENT in words, the
    Python detail in the log."""
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        return _read_dicom(data, parameters, max_pixels)
    except errors.ServiceError:
        raise
    except (InvalidDicomError, BytesLengthException, *MALFORMED_DICOM) as exc:  # BytesLengthException: a value of the wrong length
        log.info("malformed DICOM: %s: %s", type(exc).__name__, exc)
        raise errors.invalid_argument(
            "payload", "cannot read the DICOM file: its header or a tag (size, spacing, window, rescale, frames) is malformed or truncated"
        ) from None


def _read_dicom(data: bytes, parameters: dict[str, str], max_pixels: int) -> DecodedImage:
    import pydicom
    import pydicom.pixels

    dataset = pydicom.dcmread(io.BytesIO(data))
    if "PixelData" not in dataset:
        raise errors.invalid_argument("payload", "the DICOM file has no pixel data")
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if rows == 0 or columns == 0:
        raise errors.invalid_argument("payload", f"the DICOM image has no pixels ({columns}x{rows})")
    if rows * columns > max_pixels:
        raise errors.invalid_argument("payload", f"{columns}x{rows} = {rows * columns} pixels is over the limit of {max_pixels}")
    frame = None
    if frames > 1:
        frame = _int_parameter(parameters, "frame", frames // 2)
        if not 0 <= frame < frames:
            raise errors.invalid_argument("header.parameters.frame", f"{frame} is outside 0..{frames - 1}")
    try:
        # One frame only: decoding all of them first would take 1 GB and 4.5 s for 2000 RLE
        # frames of 512x512 (16 MB of DICOM), to use one.
        pixels = dataset.pixel_array if frame is None else pydicom.pixels.pixel_array(dataset, index=frame)
    except Exception as exc:  # pydicom raises many types for truncated or compressed data
        log.info("undecodable DICOM pixel data: %s: %s", type(exc).__name__, exc)
        syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
        compressed = syntax is not None and getattr(syntax, "is_compressed", False)
        what = (
            f"it is compressed as {getattr(syntax, 'name', syntax)}, which this service cannot decode"
            if compressed and "require" in str(exc)
            else "it is truncated or malformed"
        )
        raise errors.invalid_argument("payload", f"cannot decode the DICOM pixel data: {what}") from None
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
        raise errors.invalid_argument("payload", f"unsupported DICOM pixel array shape {list(pixels.shape)}")
    tags = _dicom_tags(dataset, frames)
    pixels = _to_display(pixels, dataset, tags)
    if pixels.ndim == 3:  # colour DICOM
        rgb = np.ascontiguousarray(pixels.astype(np.uint8) if pixels.dtype != np.uint8 else pixels)
        tags["colour"] = "yes" if is_colour(rgb) else "no"
        return DecodedImage(rgb=rgb, tags=tags)

    values = pixels.astype(np.float32)
    modality = str(dataset.get("Modality", ""))
    hounsfield = None
    if modality == "CT":
        slope = float(dataset.get("RescaleSlope", 1) if dataset.get("RescaleSlope") not in (None, "") else 1)
        intercept = float(dataset.get("RescaleIntercept", 0) if dataset.get("RescaleIntercept") not in (None, "") else 0)
        if not (np.isfinite(slope) and slope != 0 and np.isfinite(intercept)):
            raise errors.invalid_argument(
                "payload",
                f"RescaleSlope {slope:g} / RescaleIntercept {intercept:g}: the slope must be a non-zero number and both finite, to turn stored values into HU",
            )
        hounsfield = values * slope + intercept
        center, width = _ct_window(dataset, parameters)
        grey = np.clip((hounsfield - (center - width / 2)) / width, 0, 1)
    else:
        low, high = np.percentile(values, [0.5, 99.5])
        grey = np.zeros_like(values) if high <= low else np.clip((values - low) / (high - low), 0, 1)
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 1.0 - grey
    grey8 = (grey * 255.0 + 0.5).astype(np.uint8)
    if hounsfield is not None:
        tags["window"] = f"{center:g}/{width:g}"
    return DecodedImage(rgb=np.repeat(grey8[:, :, None], 3, axis=2), tags=tags, hounsfield=hounsfield)


def _orientation(dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """ImageOrientationPatient as (row, column) direction cosines in the patient's LPS
    axes (x to the left, y to the back, z to the head); None when absent or unusable."""
    value = dataset.get("ImageOrientationPatient")
    try:
        cosines = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        return None
    if cosines is None or cosines.shape != (6,) or not np.isfinite(cosines).all():
        return None
    row, column = cosines[:3], cosines[3:]
    if min(np.linalg.norm(row), np.linalg.norm(column)) < 0.5:
        return None
    return row / np.linalg.norm(row), column / np.linalg.norm(column)


def _to_display(pixels: np.ndarray, dataset, tags: dict[str, str]) -> np.ndarray:
    """Tags the slice's plane and turns an axial slice to the radiological display (the
    patient's left on the image's right, anterior at the top): the lesion's side is read
    off the image, so a prone scan stored as acquired named the wrong lung."""
    orientation = _orientation(dataset)
    if orientation is None:
        return pixels
    row, column = orientation
    normal = np.cross(row, column)
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.8:  # over about 37 degrees from every plane
        tags["plane"] = "oblique"
        return pixels
    tags["plane"] = ("sagittal", "coronal", "axial")[axis]
    if axis != 2:
        return pixels
    steps = []
    if abs(row[1]) > abs(row[0]):  # rows run front to back: swap the image's axes
        pixels = np.swapaxes(pixels, 0, 1)
        row, column = column, row
        steps.append("transposed")
        if "PixelSpacing" in tags:
            tags["PixelSpacing"] = "\\".join(reversed(tags["PixelSpacing"].split("\\")))
        if "Rows" in tags and "Columns" in tags:
            tags["Rows"], tags["Columns"] = tags["Columns"], tags["Rows"]
    if row[0] < 0:  # columns run to the patient's right
        pixels = pixels[:, ::-1]
        steps.append("flipped left-right")
    if column[1] < 0:  # rows run to the front
        pixels = pixels[::-1]
        steps.append("flipped top-bottom")
    if steps:
        tags["reoriented"] = ", ".join(steps)
    return np.ascontiguousarray(pixels)


def _ct_window(dataset, parameters: dict[str, str]) -> tuple[float, float]:
    preset = parameters.get("window", "file" if {"WindowCenter", "WindowWidth"} <= set(dataset.dir()) else "soft_tissue")
    if preset == "file":
        # Either value may be multi-valued (several windows); the first is the default.
        try:
            center = float(np.atleast_1d(np.asarray(dataset.WindowCenter, dtype=np.float64))[0])
            width = float(np.atleast_1d(np.asarray(dataset.WindowWidth, dtype=np.float64))[0])
        except (*MALFORMED_DICOM,):
            center = width = float("nan")
        if not (np.isfinite(center) and np.isfinite(width)):
            raise errors.invalid_argument(
                "header.parameters.window", "file: the DICOM has no usable WindowCenter and WindowWidth; give a preset or center/width"
            )
        return center, max(width, 1.0)
    return _window(preset)


def _dicom_tags(dataset, frames: int) -> dict[str, str]:
    tags = {name: str(dataset.get(name)) for name in REPORT_TAGS if dataset.get(name) not in (None, "")}
    try:
        spacing = [float(v) for v in np.atleast_1d(np.asarray(dataset.get("PixelSpacing", []), dtype=object))]
    except MALFORMED_DICOM:
        spacing = []
    if len(spacing) == 2:
        row, column = spacing
        if 0 < row <= 10 and 0 < column <= 10:
            tags["PixelSpacing"] = f"{row:g}\\{column:g}"
        else:  # 0\0 (some writers' "unknown"), 1e9, NaN: no sizes in mm from it, and the report says why
            tags["PixelSpacingIgnored"] = f"{row:g}\\{column:g} is outside (0, 10] mm"
    elif "PixelSpacing" in dataset:  # one value, three, or text: no sizes in mm from it either
        tags["PixelSpacingIgnored"] = "not two numbers"
    if frames > 1:
        tags["NumberOfFrames"] = str(frames)
    return tags


def _int_parameter(parameters: dict[str, str], name: str, default: int) -> int:
    raw = parameters.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise errors.invalid_argument(f"header.parameters.{name}", f"expected an integer, got {raw!r}") from None
