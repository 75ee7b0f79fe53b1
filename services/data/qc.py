"""An industrial quality-control task as a user would bring it: a task file and data.

A part on a conveyor is photographed and the machine that made it is recorded. Labels:
`ok`, `surface_defect` (scratches or a dent on the part), `bearing_noise` (the machine's
bearing knocks: periodic impacts ringing a high resonance over its hum) and `both`. It is
not a built-in task: `modalmesh data generate --task qc_line` writes the manifests and
`task.json`, and the task is trained and served through the task-file path
(`modalmesh train --task-file DIR/task.json ...`), exactly as a user's own task is.

Photos: 320x240, a metal disc or plate at a random place, size, angle and brightness on a
conveyor belt under uneven light, sensor noise. Sounds: 2 s at 16 kHz, a motor hum at
45-120 Hz with harmonics and broadband noise; a bearing fault adds impacts at 60-180 per
second, each a decaying 2-4 kHz ring. The held-out set: 480x360 JPEG photos of hexagonal
parts on a lighter belt; machines humming at 150-250 Hz whose bearings knock 35-60 times a
second, ringing at 1.2-1.9 or 4.2-5.5 kHz.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LABELS = ("ok", "surface_defect", "bearing_noise", "both")
SAMPLE_RATE = 16000
SECONDS = 2.0
PHOTO_SIZE = (320, 240)

TASK_FILE = {
    "name": "qc_line",
    "description": "Quality control on a production line: a photo of the part and a recording of the machine.",
    "labels": {
        "ok": {"priority": "low", "next_steps": "None: the part passes.", "reply": "Part passed inspection."},
        "surface_defect": {
            "priority": "normal",
            "next_steps": "Pull the part for rework and check the tooling for wear.",
            "reply": "Part rejected: surface defect.",
        },
        "bearing_noise": {
            "priority": "high",
            "next_steps": "Schedule bearing maintenance on the machine before the next shift.",
            "reply": "Machine flagged: bearing noise.",
        },
        "both": {
            "priority": "high",
            "next_steps": "Stop the line: pull the part and service the machine's bearing.",
            "reply": "Part rejected and machine flagged.",
        },
    },
    "modalities": ["image", "audio"],
    "needs": ["image", "audio"],  # a verdict needs both: the part's photo and the machine's sound
    "routing": {"tau": 0.9, "gamma": 0.1},
    "training": {"members": 1, "feature_noise": 0.3},
    "description_template": "QC: {label} ({confidence:.2f}), priority {priority}. {next_steps}",
}


def product_photo(rng: np.random.Generator, defect: bool, size: tuple[int, int] = PHOTO_SIZE, belt_range=(40, 90), hexagons: bool = False) -> Image.Image:
    """`size`, `belt_range` (grey level) and `hexagons` (hexagonal parts instead of discs and
    plates) are what the held-out set changes."""
    width, height = size
    belt = float(rng.uniform(*belt_range))
    pixels = np.full((height, width), belt, dtype=np.float32)
    pixels += (np.arange(width)[None, :] % int(rng.integers(18, 30)) < 2) * 12.0  # belt slats
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(image)
    scale = min(width / PHOTO_SIZE[0], height / PHOTO_SIZE[1])
    cx, cy = width / 2 + rng.uniform(-40, 40) * scale, height / 2 + rng.uniform(-30, 30) * scale
    radius = float(rng.uniform(55, 90)) * scale
    metal = int(rng.uniform(150, 215))
    tint = tuple(int(metal + d) for d in rng.integers(-12, 12, size=3))
    if hexagons:
        turn = float(rng.uniform(0, math.pi / 3))
        draw.polygon([(cx + radius * math.cos(turn + k * math.pi / 3), cy + radius * math.sin(turn + k * math.pi / 3)) for k in range(6)], fill=tint)
    elif rng.random() < 0.5:
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=tint, outline=tuple(max(0, c - 60) for c in tint), width=3)
        draw.ellipse((cx - radius * 0.25, cy - radius * 0.25, cx + radius * 0.25, cy + radius * 0.25), fill=(int(belt),) * 3)
    else:
        angle = float(rng.uniform(0, math.pi))
        corners = [
            (cx + radius * math.cos(angle + a) * sx, cy + radius * math.sin(angle + a) * sy)
            for a, sx, sy in ((0.6, 1.0, 0.8), (math.pi - 0.6, 1.0, 0.8), (math.pi + 0.6, 1.0, 0.8), (-0.6, 1.0, 0.8))
        ]
        draw.polygon(corners, fill=tint, outline=tuple(max(0, c - 60) for c in tint))
    if defect:
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.7:  # a scratch: a thin dark line across the part
                a, length = float(rng.uniform(0, math.pi)), float(rng.uniform(0.4, 0.9)) * radius
                sx, sy = cx + rng.uniform(-0.4, 0.4) * radius, cy + rng.uniform(-0.4, 0.4) * radius
                end = (sx + length * math.cos(a), sy + length * math.sin(a))
                draw.line((sx, sy, *end), fill=tuple(max(0, c - int(rng.uniform(70, 120))) for c in tint), width=int(rng.integers(2, 4)))
            else:  # a dent: a dark spot with a bright rim
                dx, dy, r = cx + rng.uniform(-0.5, 0.5) * radius, cy + rng.uniform(-0.5, 0.5) * radius, float(rng.uniform(5, 11)) * scale
                draw.ellipse((dx - r, dy - r, dx + r, dy + r), fill=tuple(max(0, c - 90) for c in tint), outline=(240, 240, 240), width=1)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    light = np.linspace(float(rng.uniform(0.75, 1.0)), float(rng.uniform(1.0, 1.2)), width, dtype=np.float32)[None, :, None]
    noisy = np.asarray(image, dtype=np.float32) * light + rng.normal(0, rng.uniform(2, 6), (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def machine_sound(rng: np.random.Generator, bearing: bool, hum_range=(45, 120), ring_ranges=((2000, 4000),), rate_range=(60, 180)) -> np.ndarray:
    """16-bit samples at SAMPLE_RATE. The ranges (the motor's hum, the bearing's ring and
    its impacts per second) are what the held-out set changes."""
    t = np.arange(int(SAMPLE_RATE * SECONDS)) / SAMPLE_RATE
    hum_hz = float(rng.uniform(*hum_range))
    signal = sum(float(rng.uniform(0.1, 0.3)) / k * np.sin(2 * np.pi * hum_hz * k * t + rng.uniform(0, 2 * np.pi)) for k in range(1, 6))
    signal = signal + rng.normal(0, rng.uniform(0.01, 0.04), t.size)
    if bearing:
        ring = ring_ranges[int(rng.integers(len(ring_ranges)))]
        rate, ring_hz = float(rng.uniform(*rate_range)), float(rng.uniform(*ring))
        ring = np.arange(int(0.004 * SAMPLE_RATE)) / SAMPLE_RATE
        burst = np.sin(2 * np.pi * ring_hz * ring) * np.exp(-ring * float(rng.uniform(900, 1600)))
        strength = float(rng.uniform(0.15, 0.4))
        impacts = np.zeros_like(signal)
        for start in np.arange(rng.uniform(0, 1 / rate), SECONDS, 1 / rate):
            index = int(start * SAMPLE_RATE)
            impacts[index : index + burst.size] += burst[: max(0, min(burst.size, impacts.size - index))] * strength * rng.uniform(0.6, 1.0)
        signal = signal + impacts
    signal = signal / max(1e-6, float(np.abs(signal).max())) * float(rng.uniform(0.3, 0.8))
    return (signal * 32767).astype(np.int16)


def qc_item(rng: np.random.Generator, item_id: str) -> tuple[dict, Image.Image, np.ndarray]:
    """(record fields, photo, sound) for one part."""
    label = str(rng.choice(LABELS))
    defect, bearing = label in ("surface_defect", "both"), label in ("bearing_noise", "both")
    return {"label": label, "extra": {"surface_defect": defect, "bearing_noise": bearing}}, product_photo(rng, defect), machine_sound(rng, bearing)


# The held-out set (`modalmesh data heldout --task qc_line`): other photos and other machines.
HELDOUT_SIZE, HELDOUT_BELT = (480, 360), (95, 130)  # photos: and hexagonal parts
HELDOUT_HUM, HELDOUT_RINGS, HELDOUT_RATE = (150, 250), ((1200, 1900), (4200, 5500)), (35, 60)  # machines


def heldout_item(rng: np.random.Generator) -> tuple[dict, Image.Image, np.ndarray]:
    """(record fields, photo, sound) for one part of the held-out set."""
    label = str(rng.choice(LABELS))
    defect, bearing = label in ("surface_defect", "both"), label in ("bearing_noise", "both")
    record = {"label": label, "extra": {"surface_defect": defect, "bearing_noise": bearing}}
    photo = product_photo(rng, defect, size=HELDOUT_SIZE, belt_range=HELDOUT_BELT, hexagons=True)
    return record, photo, machine_sound(rng, bearing, hum_range=HELDOUT_HUM, ring_ranges=HELDOUT_RINGS, rate_range=HELDOUT_RATE)
