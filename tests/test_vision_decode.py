"""Image decoding: formats, colour modes, EXIF, DICOM Hounsfield units and windows, guard rails."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from modalmesh.common.errors import ServiceError
from modalmesh.common.media import sniff_image
from modalmesh.vision.decode import CT_WINDOWS, decode_image
from tests.media import ct_dicom, image_bytes, phantom_hu

LIMIT = 40_000_000


def decode(data, media_type, **parameters):
    return decode_image(data, media_type, {k: str(v) for k, v in parameters.items()}, LIMIT)


def refused(data, media_type, **parameters) -> str:
    with pytest.raises(ServiceError) as raised:
        decode(data, media_type, **parameters)
    assert raised.value.code.name == "INVALID_ARGUMENT"
    return raised.value.message


@pytest.mark.parametrize(
    "fmt, media_type",
    [
        ("PNG", "image/png"),
        ("JPEG", "image/jpeg"),
        ("WEBP", "image/webp"),
        ("AVIF", "image/avif"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_every_raster_format_decodes_to_rgb(fmt, media_type):
    source = Image.new("RGB", (40, 30), (200, 30, 60))
    data = image_bytes(source, fmt)
    assert sniff_image(data) == media_type
    decoded = decode(data, media_type)
    assert decoded.rgb.shape == (30, 40, 3) and decoded.rgb.dtype == np.uint8
    assert np.abs(decoded.rgb.astype(int) - [200, 30, 60]).max() <= 8  # JPEG/WebP/AVIF are lossy, GIF a palette


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    decoded = decode(image_bytes(Image.fromarray(ramp), "PNG"), "image/png")
    assert decoded.rgb[..., 0].min() == 0 and decoded.rgb[..., 0].max() == 255
    assert len(np.unique(decoded.rgb[..., 0])) > 200  # the ramp survives, not a 0/255 cliff


def test_palette_alpha_cmyk_and_grey_become_rgb():
    palette = Image.new("P", (10, 10))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.paste(1, (0, 0, 10, 10))
    assert decode(image_bytes(palette, "PNG"), "image/png").rgb[0, 0].tolist() == [10, 200, 30]

    transparent = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    assert decode(image_bytes(transparent, "PNG"), "image/png").rgb[0, 0].tolist() == [255, 255, 255]  # on white

    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))  # red in CMYK
    rgb = decode(image_bytes(cmyk, "JPEG"), "image/jpeg").rgb[5, 5]
    assert rgb[0] > 200 and rgb[1] < 60 and rgb[2] < 60

    grey = Image.new("L", (10, 10), 77)
    assert decode(image_bytes(grey, "PNG"), "image/png").rgb[0, 0].tolist() == [77, 77, 77]


def test_exif_orientation_is_honoured():
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode(image_bytes(image, "JPEG", exif=exif), "image/jpeg")
    assert decoded.rgb.shape[:2] == (60, 20)


def test_a_window_may_be_given_as_center_and_width():
    decoded = decode(ct_dicom(phantom_hu(64)), "application/dicom", window="-600/1500")
    assert decoded.tags["window"] == "-600/1500"
    np.testing.assert_array_equal(decoded.rgb, decode(ct_dicom(phantom_hu(64)), "application/dicom", window="lung").rgb)
    assert "is not one of" in refused(ct_dicom(phantom_hu(64)), "application/dicom", window="-600/0")


def test_ct_dicom_becomes_hounsfield_units_and_is_windowed():
    hu = phantom_hu(128)
    data = ct_dicom(hu, pixel_spacing=(0.65, 0.65), slope=2.0, intercept=-2048.0)
    decoded = decode(data, "application/dicom")
    np.testing.assert_allclose(decoded.hounsfield, hu, atol=1.0)
    assert decoded.tags["Modality"] == "CT" and decoded.tags["BodyPartExamined"] == "CHEST"
    assert decoded.tags["PixelSpacing"] == "0.65\\0.65"
    # Soft-tissue window (no window in the file): 40 HU is mid-grey, lungs black, bone white.
    assert decoded.tags["window"] == "40/400"
    grey = decoded.rgb[..., 0]
    assert abs(int(grey[64, 10]) - 128) <= 2  # body, 40 HU
    assert grey[64, 38] == 0 and grey[96, 64] == 255
    # The lung window shows lung tissue as grey instead of black.
    lung = decode(data, "application/dicom", window="lung")
    assert lung.tags["window"] == "{:g}/{:g}".format(*CT_WINDOWS["lung"])
    assert 0 < lung.rgb[64, 38, 0] < 128


def test_the_bundled_ct_small_file():
    from pydicom.data import get_testdata_file

    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    assert sniff_image(data) == "application/dicom"  # its preamble also looks like TIFF
    decoded = decode(data, "application/dicom")
    assert decoded.rgb.shape == (128, 128, 3)
    assert decoded.tags["PixelSpacing"] == "0.661468\\0.661468"
    assert -1100 < decoded.hounsfield.min() < decoded.hounsfield.max() < 1300


def test_multi_frame_dicom_takes_the_requested_frame():
    frames = [np.full((32, 32), value) for value in (-1000.0, 40.0, 1000.0)]
    data = ct_dicom(None, frames=frames)
    assert decode(data, "application/dicom").tags["NumberOfFrames"] == "3"
    assert decode(data, "application/dicom", frame=0).rgb[0, 0, 0] == 0
    assert decode(data, "application/dicom", frame=2).rgb[0, 0, 0] == 255
    assert "outside 0..2" in refused(data, "application/dicom", frame=7)
    assert "expected an integer" in refused(data, "application/dicom", frame="last")


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims any size (its pixel data is a tiny stub)."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_malformed_images_are_refused_with_the_reason():
    png = image_bytes(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")
    assert "0 bytes" in refused(b"", "image/png")
    assert "declared image/jpeg but the bytes look like image/png" in refused(png, "image/jpeg")
    assert "match no supported image format" in refused(b"hello world, not an image", "image/png")
    assert "cannot decode" in refused(png[: len(png) // 2], "image/png")  # truncated
    assert "over the limit" in refused(_png_with_size(100_000, 100_000), "image/png")  # a bomb, refused unread
    zero = refused(_png_with_size(0, 0), "image/png")
    assert "no pixels" in zero or "cannot decode" in zero
    assert "DICOM file has no pixel data" in refused(b"\0" * 128 + b"DICM" + b"\xff" * 40, "application/dicom")
    dicom = ct_dicom(phantom_hu(64))
    assert "cannot decode the DICOM pixel data" in refused(dicom[:-2000], "application/dicom")
    assert "'brain' is not one of" in refused(dicom, "application/dicom", window="brain")


def _edited_dicom(**values) -> bytes:
    import io

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(ct_dicom(phantom_hu(64))))
    for name, value in values.items():
        setattr(dataset, name, value)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=False)
    return out.getvalue()


def test_ct_headers_that_would_give_nonsense_sizes_or_densities():
    # PixelSpacing 0 or 1e9 mm gave sizes without a word: it is set aside now, and the
    # report says so. A RescaleSlope of NaN gave NaN densities (a "nodule" at 0.65), and
    # 0 was read as 1: refused.
    for spacing, said in (([0, 0], "0\\0"), ([1e9, 1e9], "1e+09\\1e+09")):
        tags = decode(_edited_dicom(PixelSpacing=spacing), "application/dicom").tags
        assert "PixelSpacing" not in tags and tags["PixelSpacingIgnored"] == f"{said} is outside (0, 10] mm"
    for slope in (0, "nan"):
        assert "the slope must be a non-zero number" in refused(_edited_dicom(RescaleSlope=slope), "application/dicom")
    assert "both finite" in refused(_edited_dicom(RescaleIntercept="inf"), "application/dicom")
    good = decode(_edited_dicom(RescaleSlope=2, RescaleIntercept=-2048), "application/dicom")
    reference = decode(ct_dicom(phantom_hu(64)), "application/dicom")
    assert good.tags["PixelSpacing"] == "0.7\\0.7"
    np.testing.assert_allclose(good.hounsfield, 2 * (reference.hounsfield + 1024) - 2048)


def test_pixel_limit_applies_to_dicom_too():
    dicom = ct_dicom(phantom_hu(128))
    with pytest.raises(ServiceError, match="over the limit of 1000"):
        decode_image(dicom, "application/dicom", {}, max_pixels=1000)


def test_mr_is_scaled_between_percentiles_without_hounsfield_units():
    from pydicom.data import get_testdata_file

    decoded = decode(open(get_testdata_file("MR_small.dcm"), "rb").read(), "application/dicom")
    assert decoded.tags["Modality"] == "MR" and decoded.hounsfield is None
    grey = decoded.rgb[..., 0]
    assert grey.min() == 0 and grey.max() == 255  # stretched over the full range
    assert 0.001 < (grey == 255).mean() < 0.05  # only the top 0.5 % (and ties) saturate


def test_a_png_scan_takes_its_pixel_spacing_from_the_request():
    png = image_bytes(Image.new("L", (200, 100), 90), "PNG")
    assert decode(png, "image/png", pixel_spacing="0.7").tags["PixelSpacing"] == "0.7\\0.7"
    assert decode(png, "image/png", pixel_spacing="0.6\\0.8").tags["PixelSpacing"] == "0.6\\0.8"
    assert "PixelSpacing" not in decode(png, "image/png").tags
    for bad in ("wide", "0", "-1", "0.5\\0.5\\0.5", "12"):
        assert "is not one or two spacings in mm" in refused(png, "image/png", pixel_spacing=bad)


def test_the_report_says_why_a_stated_pixel_spacing_was_not_used():
    from modalmesh.router.tasks import Answer, Evidence, write_report

    answer = Answer("nodule", 0.9, 0.2, {"normal": 0.05, "nodule": 0.9, "mass": 0.05}, {"lesion_count": 1.0, "largest_diameter_mm": 8.0, "side": 1.0})
    tags = decode(_edited_dicom(PixelSpacing=[0, 0]), "application/dicom").tags
    sigma = {"largest_diameter_mm": 5.0}  # the heads' validation error: their size is shown as an estimate
    description, findings, _ = write_report(answer, Evidence(image_tags=tags, estimate_error=sigma))
    assert "pixel spacing not usable: 0\\0 is outside (0, 10] mm; the estimate assumes 0.75 mm)" in description
    description, _, _ = write_report(answer, Evidence(image_tags={"Modality": "CT"}, estimate_error=sigma))
    assert "pixel spacing not stated; the estimate assumes 0.75 mm)" in description


def test_a_compressed_multi_frame_dicom_decodes_only_the_frame_it_uses():
    # 2000 RLE frames of 512x512 (16 MB of DICOM) decoded whole would be 1 GB and 4.5 s
    # to use one. A damaged frame elsewhere shows that only the asked-for one is decoded.
    import io

    import pydicom
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    dataset = pydicom.dcmread(io.BytesIO(ct_dicom(None, frames=[np.full((32, 32), v) for v in (-1000.0, 40.0, 1000.0)])))
    dataset.compress(RLELossless, encoding_plugin="pydicom")
    frames = list(generate_frames(dataset.PixelData, number_of_frames=3))
    dataset.PixelData = encapsulate([frames[0], frames[1], b"\x01\x00\x00\x00" + b"\xff" * 60])  # frame 2: garbage
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert decode(data, "application/dicom", frame=0).rgb[0, 0, 0] == 0
    assert decode(data, "application/dicom").rgb[0, 0, 0] == decode(data, "application/dicom", frame=1).rgb[0, 0, 0]
    assert "cannot decode the DICOM pixel data" in refused(data, "application/dicom", frame=2)


# ImageOrientationPatient -> how the stored pixels relate to the radiological display.
STORED = {
    "flipped left-right": ((-1, 0, 0, 0, 1, 0), lambda hu: hu[:, ::-1]),  # a mirrored export
    "flipped left-right, flipped top-bottom": ((-1, 0, 0, 0, -1, 0), lambda hu: hu[::-1, ::-1]),  # a prone scan
    "transposed": ((0, 1, 0, 1, 0, 0), lambda hu: hu.T),
}


@pytest.mark.parametrize("steps", STORED)
def test_an_axial_slice_stored_in_another_orientation_is_turned_to_the_display(steps):
    """The lesion's side is read off the image: a prone scan stored as acquired named the
    wrong lung."""
    hounsfield = phantom_hu(96)
    hounsfield[30:40, 20:26] = 45.0  # something asymmetric, on the image's left (the patient's right)
    orientation, store = STORED[steps]
    decoded = decode_image(ct_dicom(np.ascontiguousarray(store(hounsfield)), pixel_spacing=(0.6, 0.8), orientation=orientation), "application/dicom", {}, 10**7)
    assert np.array_equal(decoded.hounsfield, hounsfield)
    assert decoded.tags["plane"] == "axial" and decoded.tags["reoriented"] == steps
    assert decoded.tags["PixelSpacing"] == ("0.8\\0.6" if steps == "transposed" else "0.6\\0.8")


def test_the_display_orientation_and_other_planes_are_left_as_stored():
    hounsfield = phantom_hu(64)
    for orientation, plane in (
        ((1, 0, 0, 0, 1, 0), "axial"),
        ((1, 0, 0, 0, 0, -1), "coronal"),
        ((0, 1, 0, 0, 0, -1), "sagittal"),
        ((1, 0, 0, 0, 0.7071, 0.7071), "oblique"),
    ):
        decoded = decode_image(ct_dicom(hounsfield, orientation=orientation), "application/dicom", {}, 10**7)
        assert decoded.tags["plane"] == plane and "reoriented" not in decoded.tags
        assert np.array_equal(decoded.hounsfield, hounsfield)
    decoded = decode_image(ct_dicom(hounsfield, orientation=(0, 0, 0, 0, 0, 0)), "application/dicom", {}, 10**7)
    assert "plane" not in decoded.tags  # unusable cosines: the display is assumed, as without the tag


def _dicom_with_raw(tag: int, vr: str, value) -> bytes:
    """The test CT with one element written as given, wrong VR and all (as a buggy writer does)."""
    import io
    import warnings

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(ct_dicom(phantom_hu(64))))
    if tag in dataset:
        del dataset[tag]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset.add_new(tag, vr, value)
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=False)
    return out.getvalue()


def _with_group_length_of(length: int) -> bytes:
    """The test CT whose file meta group length (0002,0000, a 4-byte UL) says its value is
    `length` bytes long."""
    data = bytearray(ct_dicom(phantom_hu(64)))
    start = data.index(b"DICM") + 4  # the first file meta element: tag, VR "UL", 2-byte length, value
    assert data[start : start + 6] == b"\x02\x00\x00\x00UL"
    data[start + 6 : start + 8] = length.to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize(
    "name, data",
    [
        ("Rows as text", lambda: _dicom_with_raw(0x00280010, "LO", "abc")),
        ("RescaleSlope as text", lambda: _dicom_with_raw(0x00281053, "LO", "abc")),
        ("RescaleSlope with two values", lambda: _dicom_with_raw(0x00281053, "LO", "1\\2")),
        ("NumberOfFrames as text", lambda: _dicom_with_raw(0x00280008, "LO", "abc")),
        ("truncated in its pixel data", lambda: ct_dicom(phantom_hu(64))[:-4000]),
        ("a header value of the wrong length", lambda: _with_group_length_of(2)),
    ],
)
def test_a_dicom_with_a_tag_that_does_not_parse_is_refused_in_words(name, data):
    message = refused(data(), "application/dicom")
    assert message.startswith("payload: cannot ") and "Error" not in message and "invalid literal" not in message, name


def test_a_dicom_window_or_spacing_that_cannot_be_used_is_said_so():
    no_window = _edited_dicom()
    assert "the DICOM has no usable WindowCenter and WindowWidth" in refused(no_window, "application/dicom", window="file")
    one_spacing = decode(_dicom_with_raw(0x00280030, "DS", "0.7"), "application/dicom").tags
    assert "PixelSpacing" not in one_spacing and one_spacing["PixelSpacingIgnored"] == "not two numbers"
    centre_only = decode(_dicom_with_raw(0x00281050, "DS", "40"), "application/dicom")  # no WindowWidth: not "file"
    assert centre_only.tags["window"] == "40/400"


def test_a_jpeg_of_thousands_of_scans_is_refused_before_it_is_decoded():
    """Each scan of a progressive JPEG is a decoding pass: 551 KiB of tiny scans took 17.7
    CPU-seconds, with nobody waiting. An ordinary progressive JPEG (about ten) decodes."""
    import io

    ordinary = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(ordinary, "JPEG", progressive=True)
    data = ordinary.getvalue()
    assert decode(data, "image/jpeg").rgb.shape == (64, 64, 3)
    first, end = data.index(b"\xff\xda"), data.rindex(b"\xff\xd9")
    bomb = data[:end] + data[first:end] * 500 + b"\xff\xd9"
    assert "the JPEG has 5010 scans; at most 64 are decoded" in refused(bomb, "image/jpeg")
