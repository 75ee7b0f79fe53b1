"""App screenshots rendered with Pillow: a title bar, a menu, and a dialog with a message."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont


def font(size: int):
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:  # no system font: Pillow's bundled scalable default
        return ImageFont.load_default(size=size)


def render_screenshot(message: str, size=(1024, 640), dark: bool = False, app: str = "ShopFast") -> Image.Image:
    """An app window with a title bar, a distractor menu and a dialog showing `message`."""
    background, foreground = ((30, 30, 36), (230, 230, 230)) if dark else ((246, 246, 248), (20, 20, 20))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    width, height = size
    draw.rectangle([0, 0, width, 48], fill=(52, 103, 214))
    draw.text((20, 10), app, fill=(255, 255, 255), font=font(24))
    draw.text((40, 80), "Home    Orders    Account", fill=foreground, font=font(20))
    box = [width // 2 - 330, height // 2 - 80, width // 2 + 330, height // 2 + 80]
    draw.rectangle(box, fill=(255, 236, 236), outline=(200, 40, 40), width=3)
    draw.text((box[0] + 30, box[1] + 40), message, fill=(170, 20, 20), font=font(26))
    draw.text((box[0] + 30, box[1] + 100), "OK", fill=(20, 20, 20), font=font(22))
    return image


def png_bytes(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()
