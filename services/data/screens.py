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
DISTRACTORS = (
    "Free shipping on orders over $50",
    "Sale: 20% off today",
    "Home    Orders    Account    Help",
    "Recommended for you",
    "Sign up for our newsletter",
    "© 2026 All rights reserved",
    "Track order",
    "Gift cards",
    "My wishlist",
)


def styled_font(index: int, size: int):
    try:
        return ImageFont.truetype(FONT_FILES[index % len(FONT_FILES)], size)
    except OSError:
        return font(size)


def render_app_screen(message: str, rng, mobile: bool, dark: bool, layout: str, guidance: str | None = None) -> Image.Image:
    """A varied app screen: desktop or mobile size, light or dark theme, a dialog,
    banner or toast carrying `message` (and under it, in smaller type, the advice line
    `guidance`), and distractor text around it."""
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
    # The advice line sits under the message's last line, in smaller type (OCR mostly reads it as a paragraph of its own).
    small = size_pt - (4 if mobile else 7)
    advice = _wrap(guidance, wrap + 8) if guidance else []
    advice_height = (pitch + round(small * 1.3) * len(advice)) if advice else 0

    def write_advice(x: int, y: int, ink) -> None:
        for i, line in enumerate(advice):
            draw.text((x, y + pitch + i * round(small * 1.3)), line, fill=ink, font=styled_font(face, small))

    if layout == "dialog":
        top = height // 2 - 70
        box = [20 if mobile else width // 2 - 340, top, width - 20 if mobile else width // 2 + 340, top + 70 + pitch * len(lines) + advice_height]
        draw.rectangle(box, fill=(60, 30, 30) if dark else (255, 238, 238), outline=(200, 50, 50), width=3)
        for i, line in enumerate(lines):
            draw.text((box[0] + 20, box[1] + 20 + i * pitch), line, fill=(250, 120, 120) if dark else (160, 20, 20), font=styled_font(face, size_pt))
        write_advice(box[0] + 20, box[1] + 20 + pitch * (len(lines) - 1), foreground)
        draw.text((box[2] - 60, box[3] - 32), "OK", fill=foreground, font=styled_font(face, 18))
    elif layout == "banner":
        draw.rectangle([0, 140, width, 160 + pitch * len(lines) + advice_height], fill=(255, 214, 102))
        for i, line in enumerate(lines):
            draw.text((16, 150 + i * pitch), line, fill=(30, 30, 30), font=styled_font(face, size_pt))
        write_advice(16, 150 + pitch * (len(lines) - 1), (70, 60, 40))
    else:  # toast
        bottom = height - 40 - pitch * len(lines) - advice_height
        draw.rectangle([16, bottom - 16, width - 16, height - 24], fill=(50, 50, 55))
        for i, line in enumerate(lines):
            draw.text((30, bottom - 4 + i * pitch), line, fill=(245, 245, 245), font=styled_font(face, size_pt))
        write_advice(30, bottom - 4 + pitch * (len(lines) - 1), (190, 190, 195))
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


# A second renderer, for held-out sets: web pages laid out unlike `render_app_screen`.
WEB_FONTS = ("DejaVuSansCondensed.ttf", "DejaVuSerifCondensed.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf")
WEB_SIZES = ((360, 780), (412, 915), (1280, 720), (1366, 768), (1920, 1080))
WEB_HEADINGS = ("Your orders", "Checkout", "Account settings", "Order details", "Payments", "Returns", "Help centre")
WEB_DETAILS = (
    "Order #A-{n}",
    "Placed {d} Feb",
    "Total ${n2}.{c}",
    "Ship to: {n3} Elm Street",
    "Items: {k}",
    "Card ending {n4}",
    "Delivery: standard",
    "Invoice INV-{n}",
)
COOKIE_BANNER = "We use cookies to improve your experience. Accept all  |  Manage preferences"


def web_font(name: str, size: int):
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return font(size)


def render_web_page(message: str, rng, size: tuple[int, int], dark: bool, guidance: str | None = None) -> Image.Image:
    """A shop's web page: navigation, a heading larger than everything else, a card of order
    details, the status `message` in an alert strip (above, beside or below the card; the
    advice line `guidance` under it, in smaller type), and sometimes a cookie banner. The
    message is neither the largest nor always the first line."""
    width, height = size
    narrow = width < 700
    scale = max(1.0, width / 1280)
    background, foreground, muted = ((18, 18, 22), (235, 235, 240), (150, 150, 160)) if dark else ((255, 255, 255), (30, 30, 35), (110, 110, 120))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    face = str(rng.choice(WEB_FONTS))
    body = round((15 if narrow else 17) * scale)
    draw.rectangle([0, 0, width, round(56 * scale)], fill=(245, 245, 247) if not dark else (32, 32, 38))
    draw.text((round(16 * scale), round(16 * scale)), str(rng.choice(APPS)).lower() + ".com", fill=foreground, font=web_font(face, body + 3))
    if not narrow:
        draw.text((round(width * 0.45), round(18 * scale)), "Shop   Deals   Orders   Help   Sign out", fill=muted, font=web_font(face, body))
    top = round(80 * scale)
    draw.text((round(24 * scale), top), "Home > Account > " + str(rng.choice(WEB_HEADINGS)), fill=muted, font=web_font(face, body - 2))
    draw.text((round(24 * scale), top + round(30 * scale)), str(rng.choice(WEB_HEADINGS)), fill=foreground, font=web_font(face, round(body * 1.9)))
    numbers = {
        "n": int(rng.integers(10000, 99999)),
        "d": int(rng.integers(1, 28)),
        "n2": int(rng.integers(10, 400)),
        "c": f"{int(rng.integers(0, 99)):02d}",
        "n3": int(rng.integers(1, 200)),
        "k": int(rng.integers(1, 6)),
        "n4": int(rng.integers(1000, 9999)),
    }
    details = [str(line).format(**numbers) for line in rng.choice(WEB_DETAILS, size=4, replace=False)]
    card_top = top + round(90 * scale)
    alert_lines = _wrap(message, 34 if narrow else 70)
    pitch = round(body * 1.45)
    advice = _wrap(guidance, 40 if narrow else 80) if guidance else []
    small = body - 3
    alert_height = 24 + pitch * len(alert_lines) + ((pitch + round(small * 1.4) * len(advice)) if advice else 0)
    place = str(rng.choice(["above", "below"]))
    alert_top = card_top if place == "above" else card_top + 30 + pitch * len(details) + round(20 * scale)
    if place == "above":
        card_top += alert_height + round(16 * scale)
    right = width - round(24 * scale) if narrow else round(width * 0.62)
    draw.rectangle([round(24 * scale), card_top, right, card_top + 20 + pitch * len(details)], outline=muted, width=1)
    for i, line in enumerate(details):
        draw.text((round(40 * scale), card_top + 10 + i * pitch), line, fill=foreground, font=web_font(face, body))
    tint = tuple(int(v) for v in rng.integers(0, 3, size=1))[0]
    fill = [(254, 242, 242), (255, 248, 230), (239, 246, 255)][tint] if not dark else [(64, 28, 28), (60, 48, 20), (24, 38, 64)][tint]
    ink = [(153, 27, 27), (120, 70, 0), (30, 64, 175)][tint] if not dark else [(252, 165, 165), (253, 224, 150), (147, 197, 253)][tint]
    draw.rectangle([round(24 * scale), alert_top, right, alert_top + alert_height], fill=fill)
    draw.ellipse([round(34 * scale), alert_top + 12, round(34 * scale) + body, alert_top + 12 + body], fill=ink)
    for i, line in enumerate(alert_lines):
        draw.text((round(44 * scale) + body, alert_top + 12 + i * pitch), line, fill=ink, font=web_font(face, body))
    for i, line in enumerate(advice):
        advice_top = alert_top + 12 + pitch * len(alert_lines) + round(small * 0.9) + i * round(small * 1.4)
        draw.text((round(44 * scale) + body, advice_top), line, fill=muted, font=web_font(face, small))
    if rng.random() < 0.4:
        band = round(64 * scale) if not narrow else round(110 * scale)
        draw.rectangle([0, height - band, width, height], fill=(40, 40, 46) if not dark else (235, 235, 240))
        for i, line in enumerate(_wrap(COOKIE_BANNER, 40 if narrow else 90)):
            draw.text(
                (round(20 * scale), height - band + 14 + i * pitch), line, fill=(240, 240, 240) if not dark else (20, 20, 20), font=web_font(face, body - 1)
            )
    return image


# A third renderer, for held-out sets: an e-mail client showing the shop's notification,
# in a typeface neither of the others uses (matplotlib's STIX, a Times-like serif).
MAIL_SIZES = ((390, 844), (800, 600), (1024, 768), (1440, 900))
MAIL_FOLDERS = ("Inbox  12", "Starred", "Sent", "Drafts  2", "Promotions", "Spam")
MAIL_SENDERS = ("Customer Care", "Order updates", "Account team", "Notifications", "Support")
MAIL_GREETINGS = ("Hi Sam,", "Hello Alex,", "Dear customer,", "Hi there,", "Good morning Jordan,")
MAIL_CLOSINGS = (
    "If you have any questions, just reply to this email.",
    "You can manage your emails in your account settings.",
    "This is an automated message, please do not reply.",
    "Thanks for shopping with us.",
)


def mail_font(bold: bool, size: int):
    try:
        import matplotlib

        path = f"{matplotlib.get_data_path()}/fonts/ttf/{'STIXGeneralBol' if bold else 'STIXGeneral'}.ttf"
        return ImageFont.truetype(path, size)
    except (ImportError, OSError):
        return web_font("DejaVuSerif-Bold.ttf" if bold else "DejaVuSerif.ttf", size)


def render_mail_view(message: str, rng, size: tuple[int, int], dark: bool, guidance: str | None = None) -> Image.Image:
    """An e-mail client with the shop's notification open: a folder list (wide screens), the
    sender, the subject, a greeting, `message` as a sentence of the body among others (the
    advice line `guidance`, where given, the next), and a closing line. The message is not
    set apart by any colour or box."""
    width, height = size
    narrow = width < 700
    background, foreground, muted, rule = (
        ((24, 26, 30), (228, 228, 232), (150, 150, 160), (60, 60, 70)) if dark else ((250, 250, 250), (20, 20, 25), (100, 100, 110), (220, 220, 225))
    )
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    body = 17 if narrow else 19
    left = 16
    if not narrow:
        sidebar = round(width * 0.2)
        draw.rectangle([0, 0, sidebar, height], fill=(238, 240, 244) if not dark else (32, 34, 40))
        draw.text((16, 20), "Mail", fill=foreground, font=mail_font(True, 26))
        for i, folder in enumerate(MAIL_FOLDERS):
            draw.text((20, 80 + i * 34), folder, fill=muted, font=mail_font(False, body - 2))
        left = sidebar + 28
    app = str(rng.choice(APPS))
    top = 24
    draw.text((left, top), f"{app} {rng.choice(MAIL_SENDERS)} <no-reply@{app.lower()}.com>", fill=muted, font=mail_font(False, body - 2))
    subject = f"Update on your order #{int(rng.integers(100000, 999999))}" if rng.random() < 0.5 else f"A message about your {app} account"
    draw.text((left, top + 34), subject, fill=foreground, font=mail_font(True, body + 6))
    draw.line([left, top + 80, width - 16, top + 80], fill=rule, width=1)
    chars = max(24, (width - left - 16) // (body // 2 + 1))
    paragraphs = [
        str(rng.choice(MAIL_GREETINGS)),
        message if message.endswith((".", "!", "?")) else message + ".",
        *([guidance] if guidance else []),
        str(rng.choice(MAIL_CLOSINGS)),
        f"The {app} team",
    ]
    y = top + 104
    pitch = round(body * 1.4)
    for paragraph in paragraphs:
        for line in _wrap(paragraph, chars):
            draw.text((left, y), line, fill=foreground, font=mail_font(False, body))
            y += pitch
        y += round(pitch * 0.6)
    return image


CONSOLE_TITLES = ("bash - 120x40", "zsh - build", "PowerShell", "ssh admin@host")
CONSOLE_COMMANDS = (("$ make release", "compiling 48 files..."), ("$ ./deploy.sh production", "uploading bundle..."), ("> npm run build", "bundling..."))


def render_console(message: str, rng, size: tuple[int, int], dark: bool) -> Image.Image:
    """A terminal window: a title bar, a command, its output with `message` as one line of
    it, and a prompt; monospaced type. Another kind of software than any shop screen."""
    width, height = size
    background, foreground, bar = ((16, 16, 18), (214, 214, 214), (64, 64, 70)) if dark else ((255, 255, 255), (28, 28, 28), (210, 210, 214))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, width, 34], fill=bar)
    draw.text((14, 8), str(rng.choice(CONSOLE_TITLES)), fill=foreground, font=styled_font(0, 16))
    mono = styled_font(2, 15 if width < 700 else 18)
    command, output = CONSOLE_COMMANDS[int(rng.integers(len(CONSOLE_COMMANDS)))]
    lines = [command, output, *_wrap(message, max(20, width // 11)), "exited with code 1", "$"]
    for index, line in enumerate(lines):
        draw.text((14, 50 + index * 28), line, fill=foreground, font=mono)
    return image
