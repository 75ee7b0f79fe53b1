"""App screens drawn by a real browser engine: HTML pages rendered by headless Chromium.

The Pillow renderers (data/screens.py) draw what their code draws; a browser lays out
text the way real apps reach users: its own font shaping, hinting and anti-aliasing, CSS
boxes, shadows and rounded corners, wrapped paragraphs, fixed toasts and banners over the
page. Each page is one of several kinds a customer might send a screenshot of, with the
status message placed where such a page puts it, rarely the largest or first line:

    checkout    a shop's payment page: the message in an alert above the form or under
                the Pay button, an order summary with prices beside it
    tracking    an order's tracking timeline: dated steps ("Shipped 14 Feb"), the
                message as the current step
    bank        a banking app: balance, recent transactions, the message as a snackbar
                (above the cookie banner where there is one)
    account     an account or settings page: the message in a modal dialog over it
    support     a help centre article with the message in a notice strip under its title

with a cookie banner over a third of them, light or dark, at phone to desktop sizes, in
the fonts installed (Liberation, DejaVu). `modalmesh data heldout --renderer browser`
draws its screenshots here. `render_page` needs the `chromium` executable (Debian's
package; `make setup-browser`); `available()` says whether it is here.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

KINDS = ("checkout", "tracking", "bank", "account", "support")
SIZES = ((360, 780), (390, 844), (412, 915), (768, 1024), (1280, 720), (1366, 768), (1440, 900), (1920, 1080))
FONTS = ('"Liberation Sans", sans-serif', '"DejaVu Sans", sans-serif', '"Liberation Serif", serif', '"DejaVu Sans Condensed", sans-serif')
SHOPS = ("Northwind", "Bluebell Market", "Trailhead Outfitters", "Pixel & Co", "Greenleaf", "Harbor Books")
BANKS = ("Summit Bank", "Meridian", "Cobalt Money", "First Lantern")
PRODUCTS = ("Wireless earbuds", "Trail running shoes", "Ceramic mug set", "USB-C charger 65W", "Linen shirt", "Desk lamp", "Yoga mat")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
ARTICLES = (
    "You can change the delivery address of an order until it is handed to the carrier. Open Orders, choose the order and select Edit address.",
    "Gift cards can be combined with any payment method at checkout. The remaining balance stays on your card for five years.",
    "To keep your account safe, we recommend turning on two-step verification in Settings and Security.",
)
RENDER_TIMEOUT_S = 30.0


def executable() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def available() -> bool:
    return executable() is not None


def render_page(message: str, rng: np.random.Generator, size: tuple[int, int], dark: bool, kind: str = "", guidance: str | None = None) -> Image.Image:
    """A screenshot of a `kind` page (random when '') showing `message` (and under it, in
    smaller type, the advice line `guidance`), `size` pixels, by headless Chromium.
    RuntimeError when Chromium is missing or fails."""
    return render_html(page_html(message, rng, size, dark, kind or str(rng.choice(KINDS)), guidance), size)


def render_html(document: str, size: tuple[int, int]) -> Image.Image:
    browser = executable()
    if browser is None:
        raise RuntimeError("headless Chromium is not installed (`make setup-browser`: apt install chromium)")
    with tempfile.TemporaryDirectory(prefix="modalmesh-page-") as folder:
        page, shot = Path(folder) / "page.html", Path(folder) / "page.png"
        page.write_text(document, encoding="utf-8")
        command = [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            "--force-device-scale-factor=1",
            f"--user-data-dir={folder}/profile",
            f"--window-size={size[0]},{size[1]}",
            f"--screenshot={shot}",
            page.as_uri(),
        ]
        finished = subprocess.run(command, capture_output=True, timeout=RENDER_TIMEOUT_S, check=False)
        if finished.returncode != 0 or not shot.is_file():
            raise RuntimeError(f"chromium could not render the page (exit {finished.returncode}): {finished.stderr.decode(errors='replace')[-300:]}")
        with Image.open(shot) as image:
            return image.convert("RGB")


def page_html(message: str, rng: np.random.Generator, size: tuple[int, int], dark: bool, kind: str, guidance: str | None = None) -> str:
    """The page's HTML: `kind`'s body in a shared style (colours, font, size for the width)."""
    width = size[0]
    base = int(rng.integers(14, 17)) if width < 700 else int(rng.integers(15, 19))
    font = str(rng.choice(FONTS))
    colours = (
        {"bg": "#121417", "panel": "#1d2026", "ink": "#e8e9ec", "muted": "#9aa0aa", "line": "#30343c", "accent": "#7aa2ff"}
        if dark
        else {"bg": "#f4f5f7", "panel": "#ffffff", "ink": "#1d2330", "muted": "#6b7280", "line": "#e3e5ea", "accent": "#2b5fd9"}
    )
    tone = str(rng.choice(["error", "warning", "info"]))
    tones = {
        "error": ("#fdecea", "#a8201a") if not dark else ("#3b1d1b", "#ffb4ab"),
        "warning": ("#fff4e0", "#8a5300") if not dark else ("#3a2e14", "#ffd58a"),
        "info": ("#e8f0fe", "#1a4fb4") if not dark else ("#17263f", "#a8c7fa"),
    }[tone]
    said = html.escape(message) + (f'<span class="advice">{html.escape(guidance)}</span>' if guidance else "")
    body = {"checkout": _checkout, "tracking": _tracking, "bank": _bank, "account": _account, "support": _support}[kind](said, rng, width)
    cookie = ""
    if rng.random() < 0.33:
        cookie = (
            '<div class="cookie">We use cookies to make this site work and to understand how it is used. '
            '<button>Accept all</button> <button class="plain">Manage preferences</button></div>'
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
  * {{ box-sizing: border-box; }}
  body {{ margin: 0; background: {colours["bg"]}; color: {colours["ink"]}; font: {base}px/1.45 {font}; }}
  header {{ display: flex; gap: 18px; align-items: center; padding: 12px 18px; background: {colours["panel"]}; border-bottom: 1px solid {colours["line"]}; }}
  header b {{ font-size: 1.15em; }}
  header nav {{ display: flex; gap: 14px; color: {colours["muted"]}; flex-wrap: wrap; }}
  main {{ max-width: 1080px; margin: 0 auto; padding: 16px; display: flex; gap: 18px; flex-wrap: wrap; }}
  .col {{ flex: 1 1 320px; min-width: 0; }}
  .card {{ background: {colours["panel"]}; border: 1px solid {colours["line"]}; border-radius: 10px; padding: 14px 16px; margin-bottom: 14px; }}
  h1 {{ font-size: 1.7em; margin: 4px 0 10px; }}
  h2 {{ font-size: 1.2em; margin: 0 0 8px; }}
  .muted {{ color: {colours["muted"]}; font-size: 0.9em; }}
  .row {{ display: flex; justify-content: space-between; gap: 10px; padding: 5px 0; border-bottom: 1px solid {colours["line"]}; }}
  .notice {{ background: {tones[0]}; color: {tones[1]}; border-radius: 8px; padding: 10px 14px; margin: 10px 0; }}
  .inline {{ color: {tones[1]}; font-size: 0.92em; margin-top: 6px; }}
  .advice {{ display: block; margin-top: 0.7em; font-size: 0.85em; opacity: 0.8; }}
  input {{ width: 100%; padding: 8px; margin: 4px 0 10px; border: 1px solid {colours["line"]}; border-radius: 6px;
          background: {colours["bg"]}; color: {colours["ink"]}; font: inherit; }}
  button {{ background: {colours["accent"]}; color: #fff; border: 0; border-radius: 6px; padding: 8px 16px; font: inherit; font-weight: 600; }}
  button.plain {{ background: transparent; color: inherit; border: 1px solid currentColor; }}
  .snackbar {{ position: fixed; left: 16px; right: 16px; bottom: 20px; background: #2f3237; color: #f1f1f1; border-radius: 8px;
              padding: 12px 16px; box-shadow: 0 4px 14px rgba(0,0,0,.3); }}
  .shade {{ position: fixed; inset: 0; background: rgba(0,0,0,.45); }}
  .modal {{ position: fixed; left: 50%; top: 38%; transform: translate(-50%, -50%); width: min(440px, 86vw);
           background: {colours["panel"]}; border-radius: 12px; padding: 20px; box-shadow: 0 10px 30px rgba(0,0,0,.35); }}
  .cookie {{ position: fixed; left: 0; right: 0; bottom: 0; background: #24262b; color: #eee; padding: 12px 18px; font-size: 0.9em; }}
  body.banner .snackbar {{ bottom: 120px; }}
  .step {{ padding: 6px 0 6px 18px; border-left: 3px solid {colours["line"]}; }}
  .step.now {{ border-left-color: {colours["accent"]}; font-weight: 600; }}
  footer {{ padding: 16px; color: {colours["muted"]}; font-size: 0.85em; text-align: center; }}
</style></head><body class="{"banner" if cookie else ""}">{body}{cookie}</body></html>"""


def _numbers(rng: np.random.Generator) -> dict[str, str]:
    day, month = int(rng.integers(1, 28)), str(rng.choice(MONTHS))
    return {
        "order": f"{str(rng.choice(['A', 'NW', 'BM', 'PX']))}-{int(rng.integers(10000, 99999))}",
        "date": f"{day} {month}",
        "later": f"{min(28, day + int(rng.integers(1, 5)))} {month}",
        "price": f"{int(rng.integers(8, 240))}.{int(rng.integers(0, 99)):02d}",
        "card": f"{int(rng.integers(1000, 9999))}",
        "track": f"1Z{int(rng.integers(10**8, 10**9))}",
    }


def _header(rng: np.random.Generator, name: str, links: tuple[str, ...]) -> str:
    chosen = " ".join(f"<span>{html.escape(link)}</span>" for link in links)
    return f"<header><b>{html.escape(name)}</b><nav>{chosen}</nav></header>"


def _checkout(said: str, rng, width: int) -> str:
    n = _numbers(rng)
    items = rng.choice(PRODUCTS, size=int(rng.integers(1, 4)), replace=False)
    summary = "".join(f'<div class="row"><span>{html.escape(str(p))}</span><span>${int(rng.integers(8, 120))}.99</span></div>' for p in items)
    above = rng.random() < 0.5
    alert = f'<div class="notice">{said}</div>' if above else ""
    inline = "" if above else f'<div class="inline">{said}</div>'
    return f"""{_header(rng, str(rng.choice(SHOPS)), ("Shop", "Deals", "Orders", "Help", "Account"))}
<main><div class="col"><h1>Checkout</h1>{alert}
<div class="card"><h2>Payment</h2><div class="muted">Card ending in {n["card"]}</div>
<input value="Name on card"><input value="•••• •••• •••• {n["card"]}"><button>Pay ${n["price"]}</button>{inline}</div></div>
<div class="col"><div class="card"><h2>Order summary</h2>{summary}
<div class="row"><span>Shipping</span><span>Free</span></div><div class="row"><b>Total</b><b>${n["price"]}</b></div>
<div class="muted">Order {n["order"]}</div></div></div></main><footer>Secure checkout · Returns within 30 days · Contact us</footer>"""


def _tracking(said: str, rng, width: int) -> str:
    n = _numbers(rng)
    steps = [f"Order placed {n['date']}", f"Packed {n['date']}", f"Shipped {n['later']}"][: int(rng.integers(1, 4))]
    timeline = "".join(f'<div class="step">{html.escape(s)}</div>' for s in steps) + f'<div class="step now">{said}</div>'
    return f"""{_header(rng, str(rng.choice(SHOPS)), ("Orders", "Returns", "Help"))}
<main><div class="col"><h1>Track your package</h1><div class="muted">Order {n["order"]} · Tracking number {n["track"]}</div>
<div class="card">{timeline}</div></div>
<div class="col"><div class="card"><h2>Delivery address</h2>Sam Taylor<br>14 Orchard Lane<br>Springfield</div>
<div class="card"><h2>In this package</h2>{html.escape(str(rng.choice(PRODUCTS)))}</div></div></main>"""


def _bank(said: str, rng, width: int) -> str:
    n = _numbers(rng)
    shops = rng.choice(SHOPS, size=3, replace=False)
    rows = "".join(
        f'<div class="row"><span>{html.escape(str(s))}<br><span class="muted">{n["date"]}</span></span>'
        f"<span>-${int(rng.integers(5, 90))}.{int(rng.integers(0, 99)):02d}</span></div>"
        for s in shops
    )
    return f"""{_header(rng, str(rng.choice(BANKS)), ("Accounts", "Payments", "Cards"))}
<main><div class="col"><div class="card"><div class="muted">Current account</div><h1>${int(rng.integers(100, 9000)):,}.{int(rng.integers(0, 99)):02d}</h1>
<button>Send money</button> <button class="plain">Top up</button></div>
<div class="card"><h2>Recent transactions</h2>{rows}</div></div></main>
<div class="snackbar">{said}</div>"""


def _account(said: str, rng, width: int) -> str:
    n = _numbers(rng)
    return f"""{_header(rng, str(rng.choice(SHOPS)), ("Orders", "Wishlist", "Account"))}
<main><div class="col"><h1>Account settings</h1>
<div class="card"><h2>Profile</h2><div class="row"><span>Name</span><span>Sam Taylor</span></div>
<div class="row"><span>Email</span><span>sam.taylor@example.com</span></div><div class="row"><span>Member since</span><span>{n["date"]} 2021</span></div></div>
<div class="card"><h2>Security</h2><div class="row"><span>Password</span><span>Changed 3 months ago</span></div>
<div class="row"><span>Two-step verification</span><span>On</span></div></div></div></main>
<div class="shade"></div>
<div class="modal"><h2>{html.escape(str(rng.choice(["Notice", "Heads up", "Message", "Update"])))}</h2><p>{said}</p><button>OK</button></div>"""


def _support(said: str, rng, width: int) -> str:
    article = str(rng.choice(ARTICLES))
    return f"""{_header(rng, str(rng.choice(SHOPS)) + " Help Centre", ("Topics", "Contact", "Community"))}
<main><div class="col"><div class="muted">Help Centre › Orders and delivery</div><h1>{html.escape(article.split(".")[0])}</h1>
<div class="notice">{said}</div><p>{html.escape(article)}</p><p class="muted">Was this article helpful? Yes · No</p></div></main>"""
