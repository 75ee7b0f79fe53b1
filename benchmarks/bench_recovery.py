"""Recovery after an encoder restart: how soon the router uses a vision service that is
back, counted from the moment that service reports SERVING.

    .venv/bin/python benchmarks/bench_recovery.py [--rounds 5]

Starts text, audio and router on the bundled models on 127.0.0.1 and a vision service
(features only, no OCR) on a fixed port. Each round stops the vision service, sends one
request while it is down (answered from the text, the image FAILED), starts a new vision
service on the same port, and from the moment it is SERVING sends a triage request every
20 ms (a screenshot and a message, FULL mode) until the image is USED again. Prints each
round's delay and the median. Bounded: at most `--rounds` rounds of at most 30 s each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header, machine, write_results  # noqa: E402

EXAMPLES = REPO / "examples"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="bench-results/recovery.json")
    args = parser.parse_args()
    header("ModalMesh recovery benchmark: a vision service restarted under a running router")

    from modalmesh.client import RouterClient
    from tests.conftest import start_service

    text, audio = start_service("text"), start_service("audio", transcript=False)
    vision = start_service("vision", ocr=False)
    port = vision.port
    router = start_service("router", text_target=text.address, vision_target=vision.address, audio_target=audio.address)
    screenshot = (EXAMPLES / "screenshot.png").read_bytes()
    delays = []
    try:
        with RouterClient(router.address, timeout=10) as client:

            def image_status() -> str:
                answer = client.analyze("screenshot_triage", text="my card was declined", image=screenshot, mode="full")
                return answer["modalities"]["image"]["status"]

            assert image_status() == "used"
            for round_number in range(args.rounds):
                vision.stop(grace=0)
                down = image_status()
                vision = start_service("vision", ocr=False, port=port)  # returns once SERVING
                serving = time.monotonic()
                while image_status() != "used" and time.monotonic() - serving < 30:
                    time.sleep(0.02)
                delays.append((time.monotonic() - serving) * 1000)
                print(f"round {round_number + 1}: image {down} while down; used again {delays[-1]:.0f} ms after SERVING")
    finally:
        for handle in (router, vision, text, audio):
            handle.stop(grace=0.5)
    print(f"median {statistics.median(delays):.0f} ms, max {max(delays):.0f} ms over {len(delays)} rounds")
    write_results(args.out, {"machine": machine(), "command": " ".join(sys.argv), "delays_ms": delays, "median_ms": statistics.median(delays)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
