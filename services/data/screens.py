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


FONT_FILES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf")
APPS = ("ShopFast", "PayLite", "Cartly", "MegaMart", "QuickBuy", "Homely")
DISTRACTORS = ("Free shipping on orders over $50", "Sale: 20% off today", "Home    Orders    Account    Help",
               "Recommended for you", "Sign up for our newsletter", "© 2026 All rights reserved", "Track order",
               "Gift cards", "My wishlist")


def styled_font(index: int, size: int):
    try:
        return ImageFont.truetype(FONT_FILES[index % len(FONT_FILES)], size)
    except OSError:
        return font(size)


def render_app_screen(message: str, rng, mobile: bool, dark: bool, layout: str) -> Image.Image:
    """A varied app screen: desktop or mobile size, light or dark theme, a dialog,
    banner or toast carrying `message`, and distractor text around it."""
    size = (390, 760) if mobile else (1024, 640)
    width, height = size
    background, foreground = ((28, 29, 34), (225, 225, 230)) if dark else ((247, 247, 250), (25, 25, 30))
    accent = tuple(int(v) for v in rng.integers(40, 200, size=3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    face = int(rng.integers(len(FONT_FILES)))
    draw.rectangle([0, 0, width, 44], fill=accent)
    draw.text((14, 8), str(rng.choice(APPS)), fill=(255, 255, 255), font=styled_font(face, 22))
    for row, text in enumerate(rng.choice(DISTRACTORS, size=2, replace=False)):
        draw.text((16, 64 + row * 30), str(text), fill=foreground, font=styled_font(face, 15 if mobile else 18))
    size_pt = 17 if mobile else 24
    pitch = round(size_pt * 1.3)  # line height of the message: wrapped lines sit close, as in real dialogs
    wrap = 26 if mobile else 48
    lines = _wrap(message, wrap)
    if layout == "dialog":
        top = height // 2 - 70
        box = [20 if mobile else width // 2 - 340, top, width - 20 if mobile else width // 2 + 340, top + 70 + pitch * len(lines)]
        draw.rectangle(box, fill=(60, 30, 30) if dark else (255, 238, 238), outline=(200, 50, 50), width=3)
        for i, line in enumerate(lines):
            draw.text((box[0] + 20, box[1] + 20 + i * pitch), line, fill=(250, 120, 120) if dark else (160, 20, 20), font=styled_font(face, size_pt))
        draw.text((box[2] - 60, box[3] - 32), "OK", fill=foreground, font=styled_font(face, 18))
    elif layout == "banner":
        draw.rectangle([0, 140, width, 160 + pitch * len(lines)], fill=(255, 214, 102))
        for i, line in enumerate(lines):
            draw.text((16, 150 + i * pitch), line, fill=(30, 30, 30), font=styled_font(face, size_pt))
    else:  # toast
        bottom = height - 40 - pitch * len(lines)
        draw.rectangle([16, bottom - 16, width - 16, height - 24], fill=(50, 50, 55))
        for i, line in enumerate(lines):
            draw.text((30, bottom - 4 + i * pitch), line, fill=(245, 245, 245), font=styled_font(face, size_pt))
    return image


def _wrap(text: str, width: int) -> list[str]:
    words, lines, current = text.split(), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return lines + ([current] if current else [])
