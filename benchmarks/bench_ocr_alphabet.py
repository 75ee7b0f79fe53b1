"""The quick OCR reading's Latin alphabet against every character, in process.

    .venv/bin/python benchmarks/bench_ocr_alphabet.py [--limit 60]

ROUTED mode reads screen text quickly first (`ocr_quick`: detection at
`ocr_quick_det_side`, recognition with the Latin alphabet first, `ocr_quick_alphabet`).
This reads the first --limit screenshots of each screenshot_triage manifest present (the
test split, the held-out e-mails, the browser-drawn pages; `make weights` writes them) at
the quick detection size twice, with every character and with the Latin alphabet first
(which goes first alternates per screen), and prints per manifest: mean OCR milliseconds
each way and their ratio, how many lines read to the same text (of the lines read with
every character), and how many lines the
Latin alphabet could not read (read again with every character). Then lines in Greek
(DejaVu) and, where a CJK font is installed (fonts-wqy-zenhei), Chinese and Japanese:
each must be read again and come out as with every character.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header, write_results  # noqa: E402

MANIFESTS = {
    "test split": REPO / "data" / "triage" / "test.jsonl",
    "held-out e-mails": REPO / "data" / "triage-heldout" / "heldout.jsonl",
    "browser-drawn pages": REPO / "data" / "triage-browser" / "heldout.jsonl",
}
CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"
OTHER_SCRIPTS = [
    ("Σφάλμα 402: η κάρτα απορρίφθηκε", "DejaVuSans.ttf"),
    ("Η πληρωμή απέτυχε", "DejaVuSans.ttf"),
    ("支付失败，请稍后再试", CJK_FONT),
    ("Error 错误 500: try again", CJK_FONT),
    ("Order #1234 已发货", CJK_FONT),
    ("パスワードが違います", CJK_FONT),
]


def compare(reader, images, det_side: int) -> dict:
    """Each image read both ways at `det_side`: times, lines alike, lines read again."""
    times: dict[bool, list[float]] = {False: [], True: []}
    same = lines = 0
    again = reader._recognition.read_again
    for index, rgb in enumerate(images):
        read = {}
        for latin in (True, False) if index % 2 else (False, True):
            started = time.perf_counter()
            read[latin] = reader.read(rgb, det_side=det_side, latin=latin)
            times[latin].append((time.perf_counter() - started) * 1000)
        lines += len(read[False])
        same += sum((Counter(line.text for line in read[False]) & Counter(line.text for line in read[True])).values())
    return {
        "images": len(images),
        "every_ms": statistics.fmean(times[False]),
        "latin_ms": statistics.fmean(times[True]),
        "lines": lines,
        "same_text": same,
        "read_again": reader._recognition.read_again - again,
    }


def other_scripts(reader, det_side: int) -> list[dict]:
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    rows = []
    for text, font_file in OTHER_SCRIPTS:
        try:
            font = ImageFont.truetype(font_file, 26)
        except OSError:
            continue
        page = Image.new("RGB", (1024, 640), "white")
        ImageDraw.Draw(page).text((40, 200), text, fill=(20, 20, 20), font=font)
        rgb = np.asarray(page)
        again = reader._recognition.read_again
        latin = [line.text for line in reader.read(rgb, det_side=det_side, latin=True)]
        rows.append(
            {
                "drawn": text,
                "latin_first": latin,
                "same": latin == [line.text for line in reader.read(rgb, det_side=det_side)],
                "read_again": reader._recognition.read_again - again,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60, help="screenshots per manifest (0: all)")
    parser.add_argument("--out", default=str(REPO / "bench-results" / "ocr_alphabet.json"))
    args = parser.parse_args()
    info = header("ModalMesh OCR benchmark: the quick reading's Latin alphabet against every character")

    import numpy as np
    from PIL import Image

    from modalmesh.common.config import ServiceConfig
    from modalmesh.data.generate import read_manifest
    from modalmesh.vision.ocr import ScreenReader

    det_side = ServiceConfig.ocr_quick_det_side
    reader = ScreenReader(engine="openvino")
    reader.warm_up()
    results: dict = {"machine": info, "det_side": det_side, "manifests": {}}
    print(f"\nOCR at the quick detection size ({det_side} px), in process, mean per screenshot")
    for name, manifest in MANIFESTS.items():
        if not manifest.is_file():
            print(f"   {name}: {manifest.relative_to(REPO)} missing (`make weights` writes it)")
            continue
        records = [r for r in read_manifest(manifest) if r.get("image")][: args.limit or None]
        images = [np.asarray(Image.open(manifest.parent / r["image"]).convert("RGB")) for r in records]
        row = results["manifests"][name] = compare(reader, images, det_side)
        print(
            f"   {name:20s} {row['images']:3d} screens: every character {row['every_ms']:6.1f} ms, Latin first {row['latin_ms']:6.1f} ms "
            f"(ratio {row['latin_ms'] / row['every_ms']:.2f}); {row['same_text']} of {row['lines']} lines read alike, "
            f"{row['read_again']} read again with every character"
        )
    results["other_scripts"] = other_scripts(reader, det_side)
    print("\nLines in other scripts, Latin first")
    for row in results["other_scripts"]:
        print(f"   {row['drawn']!r:40s} -> {row['latin_first']!r}: read again {row['read_again']}, as with every character: {row['same']}")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
