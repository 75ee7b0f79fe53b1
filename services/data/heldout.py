"""`modalmesh data heldout`: evaluation sets built differently from the training data, with
inputs the task should not answer.

    modalmesh data heldout --task medical_report --out data/medical-heldout --n 300 --seed 13

writes heldout.jsonl and files/. Every record has "scope": "in" (the task's own kind of
input, with its label) or "out" (an input the task should not answer; label null).
`modalmesh eval` scores the in-scope items as usual and reports, for all of them, what the
router would answer, withhold or find not applicable.

How the in-scope items differ from `data generate`'s:
- medical_report: phantoms of another anatomy (a heart and an aorta between squarer
  lungs), 512 px instead of 384, pixel spacing 0.5-1.0 mm instead of 0.6-0.9, noise 20-45
  HU instead of 10-30; a third exported as a 16-bit PNG with its window and spacing (the
  rest DICOM, BodyPartExamined CHEST, LUNG or absent, rescale intercept -1000 or -1024);
  patient records in a clinical shorthand no training record uses.
- screenshot_triage: e-mail notifications from a renderer training never uses
  (screens.render_mail_view: a folder list, sender and subject, the status message as one
  sentence of the body with no box or colour to mark it, a serif typeface no training
  screen has), at 390-1440 px, light or dark, PNG or JPEG; screen and message wordings
  from the test pools (never trained on) or written for this file only, 40% of them with an
  advice line after the message ("Please retry in a little while."), likewise. With
  `--renderer browser`, web and app pages drawn by headless Chromium instead
  (data/browser.py: five kinds of page, at 360-1920 px; training draws none with a
  browser), with the same wordings.
- qc_line: 480x360 JPEG photos of hexagonal parts on a lighter belt, and machines with
  another hum and another bearing ring and knock rate (data/qc.py heldout_item).
Out of scope:
- qc_line: photographs with a machine's sound; a screenshot with a voice message.
- medical_report: head CT phantoms (Shepp-Logan, in HU, as CT DICOM), abdominal slices with
  no lungs, pydicom's head CTs, MR and chest crop, photographs (colour and greyscale),
  app screenshots; half with a patient record.
- screenshot_triage: CT slices (PNG), photographs, patient records as the message,
  sounds with no speech in them as the voice message (music, noise, mains hum), and a
  screenshot with a message about the task's own matters in another language (German,
  Spanish, French, Portuguese) or about other matters altogether (build tools, travel,
  weather; some drawn as a terminal window), drawn by the set's renderer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from modalmesh.common.progress import progress
from modalmesh.data.generate import refuse_foreign_manifest

NAME = "heldout.jsonl"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "moon", "page")  # scikit-image's; the last three are grey
PYDICOM_FILES = ("693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm", "CT_small.dcm", "MR_small.dcm")

SHORTHAND_RECORDS = (
    "{age}{sex}, {smoking}. {symptom} x{weeks}/52.",
    "Pt {age}yo {sex}. Hx: {smoking}. Presents w/ {symptom}.",
    "Referral: {symptom}, {weeks} wk. {smoking}. Age {age}.",
    "{symptom}; {smoking}; {age} y/o {sex}",
)
SHORTHAND_SMOKING = ("ex-smoker {n} pk-yr", "current smoker {n} pk-yr", "never smoked", "non-smoker", "quit 10 yrs ago")
SHORTHAND_SYMPTOMS = ("cough", "SOB", "CP", "wt loss", "haemoptysis", "tired all the time", "routine check")

# Written for this file only: in no pool of data/triage.py.
HELDOUT_SCREENS = {
    "payment": [
        "Your card issuer said no to this payment. Try another card.",
        "We could not take payment for this order",
        "Payment unsuccessful - please check your card details",
        "Bank authorisation was refused",
    ],
    "login": [
        "Authentication failed. The verification code has expired.",
        "That password doesn't match our records",
        "You have been signed out for security reasons",
        "Your login link is no longer valid",
    ],
    "crash": [
        "A JavaScript error occurred in the main process",
        "This page isn't working right now. Reload?",
        "Aw, snap! Something crashed while loading",
        "The application encountered a fatal problem",
    ],
    "shipping": [
        "In transit - last update 9 days ago",
        "Delivery attempt failed: nobody home",
        "Your parcel is held at customs",
        "Estimated delivery: unknown",
    ],
    "refund": [
        "Refund pending - allow up to 14 days",
        "We were unable to refund your original payment method",
        "Your refund request is under review",
        "Refund on hold: item not yet received",
    ],
    "other": [
        "Your order has been delivered. Enjoy!",
        "Thanks! We've received your payment.",
        "Preferences updated",
        "You're all caught up",
        "Your password was changed",
    ],
}
# Out of scope for screenshot_triage, which reads English messages about a shop's app:
# the same matters in other languages (the label they would have is kept as "meaning"),
# and screens and messages about other matters altogether.
OTHER_LANGUAGE = {
    "German": [
        ("payment", "Zahlung abgelehnt. Bitte verwenden Sie eine andere Karte.", "meine Kreditkarte wird nicht akzeptiert"),
        ("login", "Das Passwort ist falsch. Versuchen Sie es erneut.", "ich kann mich nicht mehr einloggen"),
        ("shipping", "Die Sendung verzögert sich um einige Tage", "mein Paket ist immer noch nicht da"),
        ("refund", "Ihre Erstattung wird noch bearbeitet", "wann bekomme ich mein Geld zurück"),
        ("crash", "Die App wurde unerwartet beendet", "die App stürzt ständig ab"),
    ],
    "Spanish": [
        ("payment", "No se pudo procesar el pago con esta tarjeta", "me rechazan la tarjeta al pagar"),
        ("login", "El código de verificación ha caducado", "no me deja entrar en mi cuenta"),
        ("shipping", "Tu envío está retenido en la aduana", "el paquete lleva semanas sin llegar"),
        ("refund", "Reembolso pendiente de aprobación", "todavía no me han devuelto el dinero"),
        ("crash", "Se ha producido un error inesperado", "la aplicación se cierra al abrirla"),
    ],
    "French": [
        ("payment", "Paiement refusé par votre banque", "impossible de payer ma commande"),
        ("login", "Identifiant ou mot de passe incorrect", "je n'arrive pas à me connecter"),
        ("shipping", "Livraison reportée : adresse introuvable", "ma commande n'est jamais arrivée"),
        ("refund", "Votre demande de remboursement est en cours", "toujours pas remboursé"),
        ("crash", "Une erreur est survenue, l'application va se fermer", "l'application plante sans arrêt"),
    ],
    "Portuguese": [
        ("payment", "Pagamento recusado. Tente outro cartão.", "o meu cartão foi recusado"),
        ("shipping", "A sua encomenda está atrasada", "onde está a minha encomenda"),
        ("refund", "O reembolso está a ser processado", "ainda não recebi o reembolso"),
    ],
}
OTHER_TOPIC = [
    ("Build failed with 7 errors. See the log for details.", "our nightly build broke again"),
    ("fatal: unable to access the remote repository", "git push doesnt work from the office"),
    ("Certificate for api.internal expires in 3 days", "do we need to renew the certificate"),
    ("Out of memory: killed process 4312 (java)", "the batch job dies every night"),
    ("Your 10:30 stand-up has been moved to 11:00", "can you move my meeting"),
    ("Storm warning for the coast until Sunday", "is it safe to drive tomorrow"),
    ("Gate change: flight LH402 now boards at B12", "which gate do I go to"),
    ("Your prescription is ready for collection", "when can I pick up my medicine"),
    ("Homework due: chapter 4 exercises", "I forgot my homework"),
    ("Parking permit expires at the end of the month", "how do I renew my parking permit"),
    ("Printer offline: paper jam in tray 2", "the printer on floor 3 is stuck"),
    ("Match postponed due to heavy rain", "is the game still on tonight"),
]
HELDOUT_MESSAGES = {
    "payment": ["my card keeps getting rejected when I pay", "cant pay for my basket, bank says no", "payment wont go thru??"],
    "login": ["locked out of my account again", "the code you texted me doesnt work", "it logs me out every time"],
    "crash": ["site shows a blank white page with an error", "app just closes when i open it", "the page crashed halfway"],
    "shipping": ["where is my parcel, its been ages", "tracking hasnt moved in a week", "package never turned up"],
    "refund": ["still no money back for my return", "you owe me a refund", "refund hasnt shown up on my card"],
    "other": ["how do i change my email address", "great service, thanks!", "can I get the invoice as a PDF?"],
}

# Advice lines under a screen's message (data/triage.py GUIDANCE's kind), written for this
# file only; a held-out screen shows one HELDOUT_GUIDANCE_SHARE of the time, half of them
# from GUIDANCE's test pool.
HELDOUT_GUIDANCE = [
    "Please retry in a little while.",
    "Reach out to our help desk if this persists.",
    "Visit our support site for help.",
    "Apologies for any trouble this causes.",
    "Reload and give it another go.",
    "Our agents are available 8am to 8pm, seven days a week.",
    "Need a hand? We're here to help.",
    "Try once more, or get in touch with us.",
    "Contact us and we will sort it out.",
    "Nothing else is needed from you right now.",
]
HELDOUT_GUIDANCE_SHARE = 0.4


def heldout(task: str, out: str | Path, n: int, seed: int, renderer: str = "mail") -> Path:
    """Writes `out`/heldout.jsonl with about n in-scope and n/2 out-of-scope items.
    `renderer`: how screenshot_triage's screens are drawn ("mail" or "browser")."""
    out = Path(out)
    writer = {"medical_report": _medical, "screenshot_triage": _triage_mail, "qc_line": _qc}.get(task)
    if writer is None:
        raise ValueError(f"unknown task {task!r}; one of screenshot_triage, medical_report, qc_line")
    if renderer == "browser":
        if task != "screenshot_triage":
            raise ValueError("--renderer browser draws screenshot_triage's screens only")
        from modalmesh.data import browser

        if not browser.available():
            raise RuntimeError("--renderer browser needs headless Chromium (`make setup-browser`: apt install chromium)")
        writer = _triage_browser
    path = out / NAME
    refuse_foreign_manifest(path)
    (out / "files").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 104729])
    plan = [("in", i) for i in range(n)] + [("out", i) for i in range(max(len(PHOTOS), n // 2))]
    partial = path.with_suffix(".jsonl.partial")
    with partial.open("w") as manifest:
        for index, (scope, number) in enumerate(progress(plan, len(plan), f"{task} heldout")):
            item_id = f"heldout-{index:05d}"
            record = {"id": item_id, "task": task, "split": "heldout", "scope": scope, **writer(rng, scope, number, out, item_id)}
            manifest.write(json.dumps(record) + "\n")
    partial.replace(path)
    return path


def _photo(name: str) -> bytes:
    try:
        from skimage import data
    except ImportError as exc:  # a dev dependency: the held-out sets' photographs
        raise RuntimeError("held-out sets need scikit-image (pip install scikit-image)") from exc
    from modalmesh.data.screens import png_bytes
    from PIL import Image

    return png_bytes(Image.fromarray(getattr(data, name)()), "JPEG", quality=90)


def _record_text(rng) -> str:
    return str(rng.choice(SHORTHAND_RECORDS)).format(
        age=int(rng.integers(30, 90)),
        sex=str(rng.choice(["M", "F"])),
        weeks=int(rng.integers(1, 12)),
        smoking=str(rng.choice(SHORTHAND_SMOKING)).format(n=int(rng.integers(5, 60))),
        symptom=str(rng.choice(SHORTHAND_SYMPTOMS)),
    )


# ----------------------------------------------------------------------- medical_report


def heldout_phantom(rng):
    """A slice of the held-out anatomy (a heart and an aorta between squarer lungs, 512 px,
    spacing 0.5-1.0 mm, noise 20-45 HU), its lesion count and size drawn as for the
    held-out set; returns (the phantom, its lesion count)."""
    from modalmesh.data.ct import make_phantom

    count = int(rng.choice([0, 1, 2, 3], p=[0.34, 0.33, 0.2, 0.13]))
    diameter = float(rng.uniform(5, 29)) if rng.random() < 0.5 else float(rng.uniform(32, 55))
    phantom = make_phantom(
        int(rng.integers(1 << 31)),
        size=512,
        lesion_count=count,
        diameter_mm=diameter if count else None,
        spacing_mm=(0.5, 1.0),
        noise_hu=(20.0, 45.0),
        heart=True,
    )
    return phantom, count


def _medical(rng, scope: str, number: int, out: Path, item_id: str) -> dict:
    from modalmesh.data.ct import windowed_png, write_ct_dicom

    if scope == "in":
        phantom, _ = heldout_phantom(rng)
        record: dict = {
            "label": phantom.label,
            "text": _record_text(rng) if rng.random() > 0.1 else "",
            "extra": {
                "lesion_count": len(phantom.lesions),
                "largest_diameter_mm": round(phantom.largest_mm, 2),
                "side": phantom.side,
                "pixel_spacing_mm": round(phantom.pixel_spacing_mm, 4),
                "kind": "phantom",
            },
        }
        spacing = f"{phantom.pixel_spacing_mm:.4f}"
        if rng.random() < 1 / 3:  # a viewer's export: 16-bit PNG, lung window, spacing stated
            (out / "files" / f"{item_id}.png").write_bytes(windowed_png(phantom.hounsfield, -600, 1500, bits=16))
            record.update(image=f"files/{item_id}.png", image_parameters={"pixel_spacing": spacing, "window": "lung"})
        else:
            body_part = str(rng.choice(["CHEST", "LUNG", ""]))
            intercept = float(rng.choice([-1000.0, -1024.0]))
            data = write_ct_dicom(
                phantom.hounsfield, (phantom.pixel_spacing_mm,) * 2, intercept=intercept, body_part=body_part, uid_seed=f"modalmesh-heldout-{item_id}"
            )
            (out / "files" / f"{item_id}.dcm").write_bytes(data)
            record.update(image=f"files/{item_id}.dcm", image_parameters={"window": "lung"})
        return record
    kinds = ("head CT", "abdomen CT", "pydicom", "photo", "screenshot")
    kind = kinds[number % len(kinds)]
    record = {"label": None, "text": _record_text(rng) if rng.random() < 0.5 else "", "extra": {"kind": kind}}
    if kind == "head CT":
        data = write_ct_dicom(_head_hu(rng), (0.5, 0.5), body_part=str(rng.choice(["HEAD", ""])), uid_seed=f"modalmesh-{item_id}")
        name, parameters = f"{item_id}.dcm", {"window": "lung"}
    elif kind == "abdomen CT":
        data = write_ct_dicom(_abdomen_hu(rng), (0.75, 0.75), body_part=str(rng.choice(["ABDOMEN", ""])), uid_seed=f"modalmesh-{item_id}")
        name, parameters = f"{item_id}.dcm", {"window": "lung"}
    elif kind == "pydicom":
        from pydicom.data import get_testdata_file

        file = PYDICOM_FILES[(number // len(kinds)) % len(PYDICOM_FILES)]
        data, name, parameters = Path(str(get_testdata_file(file))).read_bytes(), f"{item_id}.dcm", {}
        record["extra"]["file"] = file
    elif kind == "photo":
        photo = PHOTOS[(number // len(kinds)) % len(PHOTOS)]
        data, name, parameters = _photo(photo), f"{item_id}.jpg", {}
        record["extra"]["photo"] = photo
    else:
        from modalmesh.data.screens import png_bytes, render_app_screen

        image = render_app_screen(str(rng.choice(HELDOUT_SCREENS["payment"])), rng, bool(rng.random() < 0.5), False, "dialog")
        data, name, parameters = png_bytes(image), f"{item_id}.png", {}
    (out / "files" / name).write_bytes(data)
    return {**record, "image": f"files/{name}", **({"image_parameters": parameters} if parameters else {})}


def _head_hu(rng) -> np.ndarray:
    """A head CT slice in HU: scikit-image's Shepp-Logan phantom (skull, brain, ventricles)."""
    try:
        from skimage.data import shepp_logan_phantom
    except ImportError as exc:
        raise RuntimeError("held-out sets need scikit-image (pip install scikit-image)") from exc
    from PIL import Image

    size = int(rng.choice([256, 384, 512]))
    values = np.asarray(Image.fromarray(shepp_logan_phantom().astype(np.float32)).resize((size, size)), dtype=np.float32)
    hu = np.where(values <= 0.01, -1000.0, np.where(values >= 0.9, 900.0, 15.0 + 60.0 * values)).astype(np.float32)
    return hu + rng.normal(0, rng.uniform(5, 20), size=hu.shape).astype(np.float32)


def _abdomen_hu(rng) -> np.ndarray:
    """An abdominal slice in HU: body, fat, liver, kidneys, spine, bowel gas; no lungs."""
    size = 384
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    hu[((x - c) / (size * 0.44)) ** 2 + ((y - c) / (size * 0.34)) ** 2 <= 1] = -100.0
    hu[((x - c) / (size * 0.42)) ** 2 + ((y - c) / (size * 0.32)) ** 2 <= 1] = 35.0
    hu[((x - c + size * 0.16) / (size * 0.17)) ** 2 + ((y - c + size * 0.02) / (size * 0.2)) ** 2 <= 1] = 60.0  # liver
    for side in (-1, 1):
        hu[((x - c - side * size * 0.17) / (size * 0.05)) ** 2 + ((y - c - size * 0.12) / (size * 0.08)) ** 2 <= 1] = 30.0
    hu[(x - c) ** 2 + (y - c - size * 0.2) ** 2 <= (size * 0.05) ** 2] = 700.0
    for _ in range(int(rng.integers(1, 4))):  # bowel gas: small, inside the body
        gy, gx = c + rng.uniform(-0.15, 0.1) * size, c + rng.uniform(0.0, 0.2) * size
        hu[(x - gx) ** 2 + (y - gy) ** 2 <= (size * rng.uniform(0.01, 0.025)) ** 2] = -900.0
    return hu + rng.normal(0, rng.uniform(10, 30), size=hu.shape).astype(np.float32)


# ----------------------------------------------------------------------- screenshot_triage


def _triage_mail(rng, scope: str, number: int, out: Path, item_id: str) -> dict:
    return _triage(rng, scope, number, out, item_id, "mail")


def _triage_browser(rng, scope: str, number: int, out: Path, item_id: str) -> dict:
    return _triage(rng, scope, number, out, item_id, "browser")


def _triage(rng, scope: str, number: int, out: Path, item_id: str, renderer: str) -> dict:
    from modalmesh.data import browser
    from modalmesh.data.screens import MAIL_SIZES, png_bytes, render_console, render_mail_view
    from modalmesh.data.triage import GUIDANCE, LABELS, MESSAGE_TEMPLATES, MESSAGES, VAGUE, pool, screen_wording, wording

    if scope == "in":
        label = str(rng.choice(LABELS))
        screen = str(rng.choice(HELDOUT_SCREENS[label])) if rng.random() < 0.5 else screen_wording(rng, label, "test")
        kind = str(rng.choice(["specific", "vague", "missing"], p=[0.5, 0.25, 0.25]))
        if kind == "specific":
            text = str(rng.choice(HELDOUT_MESSAGES[label])) if rng.random() < 0.5 else wording(rng, label, "test", MESSAGES, MESSAGE_TEMPLATES)
        else:
            text = str(rng.choice(pool(VAGUE, "test"))) if kind == "vague" else ""
        advice = rng.spawn(1)[0]  # a stream of its own: the set's other draws stay as they are without advice lines
        guidance = None
        if advice.random() < HELDOUT_GUIDANCE_SHARE:
            guidance = str(advice.choice(HELDOUT_GUIDANCE if advice.random() < 0.5 else pool(GUIDANCE, "test")))
        extra = {"screen": screen, "guidance": guidance, "message_kind": kind}
        if renderer == "browser":
            size = browser.SIZES[int(rng.integers(len(browser.SIZES)))]
            extra["page"] = page = str(rng.choice(browser.KINDS))
            image = browser.render_page(screen, rng, size, bool(rng.random() < 0.3), page, guidance)
        else:
            size = MAIL_SIZES[int(rng.integers(len(MAIL_SIZES)))]
            image = render_mail_view(screen, rng, size, bool(rng.random() < 0.3), guidance)
        jpeg = rng.random() < 0.4
        name = f"{item_id}.{'jpg' if jpeg else 'png'}"
        (out / "files" / name).write_bytes(png_bytes(image, "JPEG", quality=int(rng.integers(75, 95))) if jpeg else png_bytes(image))
        case: dict = {"label": label, "text": text, "image": f"files/{name}", "extra": {**extra, "size": f"{size[0]}x{size[1]}", "renderer": renderer}}
        if text:  # a vague message alone shows no label
            case["alone_labels"] = {"text": label if kind == "specific" else None}
        return case
    kinds = ("ct", "photo", "record", "sound", "language", "topic")
    kind = kinds[number % len(kinds)]
    record: dict = {"label": None, "text": "", "extra": {"kind": kind}}
    if kind in ("language", "topic"):  # a screenshot and a message, both about what the task does not read
        if kind == "language":
            language = str(rng.choice(sorted(OTHER_LANGUAGE)))
            meaning, screen, text = OTHER_LANGUAGE[language][int(rng.integers(len(OTHER_LANGUAGE[language])))]
            record["extra"].update(language=language, meaning=meaning)
        else:
            screen, text = OTHER_TOPIC[int(rng.integers(len(OTHER_TOPIC)))]
        dark = bool(rng.random() < 0.3)
        if renderer == "browser":
            size = browser.SIZES[int(rng.integers(len(browser.SIZES)))]
            image = browser.render_page(screen, rng, size, dark, str(rng.choice(browser.KINDS)))
        elif kind == "topic" and rng.random() < 0.5:
            size = MAIL_SIZES[int(rng.integers(len(MAIL_SIZES)))]
            image = render_console(screen, rng, size, dark)
        else:
            size = MAIL_SIZES[int(rng.integers(len(MAIL_SIZES)))]
            image = render_mail_view(screen, rng, size, dark)
        (out / "files" / f"{item_id}.png").write_bytes(png_bytes(image))
        record.update(text=text, image=f"files/{item_id}.png")
        record["extra"].update(screen=screen, size=f"{size[0]}x{size[1]}")
    elif kind == "ct":
        from modalmesh.data.ct import make_phantom, windowed_png

        phantom = make_phantom(int(rng.integers(1 << 31)), size=384, heart=bool(rng.random() < 0.5))
        (out / "files" / f"{item_id}.png").write_bytes(windowed_png(phantom.hounsfield, -600, 1500))
        record["image"] = f"files/{item_id}.png"
    elif kind == "photo":
        photo = PHOTOS[(number // len(kinds)) % len(PHOTOS)]
        (out / "files" / f"{item_id}.jpg").write_bytes(_photo(photo))
        record.update(image=f"files/{item_id}.jpg")
        record["extra"]["photo"] = photo
    elif kind == "sound":
        from modalmesh.audio.speech import wav_bytes

        sound, what = not_speech(rng)
        (out / "files" / f"{item_id}.wav").write_bytes(wav_bytes(sound, SPEECHLESS_RATE))
        record["audio"] = f"files/{item_id}.wav"
        record["extra"]["sound"] = what
    else:
        record["text"] = _record_text(rng)
    return record


SPEECHLESS_RATE = 16000


def not_speech(rng) -> tuple[np.ndarray, str]:
    """2-6 s of sound with no speech in it, as 16-bit samples at SPEECHLESS_RATE, and what
    it is: a tune (notes with harmonics), noise (white or brown) or mains hum."""
    seconds = float(rng.uniform(2.0, 6.0))
    t = np.arange(int(seconds * SPEECHLESS_RATE)) / SPEECHLESS_RATE
    what = str(rng.choice(["tune", "noise", "hum"]))
    if what == "tune":
        note_s = float(rng.uniform(0.2, 0.6))
        pitches = 220.0 * 2 ** (rng.integers(0, 24, size=int(seconds / note_s) + 1) / 12)
        pitch = pitches[(t / note_s).astype(int)]
        sound = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in (1, 2, 3))
    elif what == "noise":
        white = rng.normal(0.0, 1.0, t.size)
        sound = white if rng.random() < 0.5 else np.cumsum(white) / np.sqrt(t.size)
        sound = sound - sound.mean()
    else:
        mains = float(rng.choice([50.0, 60.0]))
        sound = sum(np.sin(2 * np.pi * k * mains * t) / k for k in (1, 2, 3, 5)) + rng.normal(0.0, 0.05, t.size)
    level = float(rng.uniform(0.05, 0.5))
    return (level * 32767 * sound / max(1e-9, float(np.abs(sound).max()))).astype(np.int16), what


def _qc(rng, scope: str, number: int, out: Path, item_id: str) -> dict:
    """In scope: parts and machines unlike training's (data/qc.py heldout_item). Out of
    scope: photographs with a machine's sound, and a screenshot with a voice message."""
    from modalmesh.audio.speech import espeak, wav_bytes
    from modalmesh.data.qc import SAMPLE_RATE, heldout_item, machine_sound
    from modalmesh.data.screens import png_bytes, render_screenshot

    if scope == "in":
        record, part, sound = heldout_item(rng)
        (out / "files" / f"{item_id}.jpg").write_bytes(png_bytes(part, "JPEG", quality=int(rng.integers(80, 95))))
        (out / "files" / f"{item_id}.wav").write_bytes(wav_bytes(sound, SAMPLE_RATE))
        return {"image": f"files/{item_id}.jpg", "audio": f"files/{item_id}.wav", **record}
    record = {"label": None, "image": f"files/{item_id}.jpg", "audio": f"files/{item_id}.wav"}
    if number % 2 == 0:
        photo = PHOTOS[(number // 2) % len(PHOTOS)]
        (out / "files" / f"{item_id}.jpg").write_bytes(_photo(photo))
        (out / "files" / f"{item_id}.wav").write_bytes(wav_bytes(machine_sound(rng, bool(rng.random() < 0.5)), SAMPLE_RATE))
        record["extra"] = {"kind": "photo", "photo": photo}
    else:
        (out / "files" / f"{item_id}.jpg").write_bytes(png_bytes(render_screenshot("Error 402: Payment declined"), "JPEG", quality=90))
        engine = espeak()
        said = engine.synthesize("The machine on line two is making a noise.", "en-us", 150)
        (out / "files" / f"{item_id}.wav").write_bytes(wav_bytes(said, engine.sample_rate))
        record["extra"] = {"kind": "screenshot and speech"}
    return record
