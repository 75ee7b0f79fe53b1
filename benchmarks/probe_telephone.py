"""How well are voice messages heard after a telephone line? Word error rate of the audio
service's transcripts of a manifest's voice clips, as recorded and as a call centre stores
them (8 kHz G.711 mu-law WAV: speech band-limited to 4 kHz, 8-bit companded), in one run.

    .venv/bin/python benchmarks/probe_telephone.py                       # the test split's voice messages
    .venv/bin/python benchmarks/probe_telephone.py --data data/medical/test.jsonl

The clips are the generator's (eSpeak voices, `modalmesh data generate`); the telephone
copy is made here with libsndfile (resampled with scipy's polyphase filter). The audio
service on 127.0.0.1 decodes both, as it decodes any request, and Whisper base transcribes
them. Prints the word error rate of each, the clips heard differently, and a few examples.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header  # noqa: E402
from modalmesh.up import free_port  # noqa: E402

MAX_SECONDS = 900  # a bounded loop: stop sending after this long, report what was measured


def telephone_copy(wav: bytes) -> bytes:
    """`wav` as 8 kHz mono G.711 mu-law WAV."""
    import numpy as np
    import soundfile
    from scipy.signal import resample_poly

    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    phone = resample_poly(samples.mean(axis=1), 8000, rate).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(phone, -1.0, 1.0), 8000, subtype="ULAW", format="WAV")
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO / "data" / "triage" / "test.jsonl"))
    args = parser.parse_args()
    from modalmesh.audio.lm import word_errors
    from modalmesh.common.client import EncoderClient, connect
    from modalmesh.data.generate import read_manifest
    from modalmesh.up import ORDER, Mesh

    manifest = Path(args.data)
    if not manifest.is_file():
        print(f"{manifest}: no such manifest; make one with `modalmesh data generate` (README)", file=sys.stderr)
        return 2
    clips = [
        (record["id"], (record.get("extra") or {}).get("voice") or (record.get("extra") or {}).get("dictation"), manifest.parent / record["audio"])
        for record in read_manifest(manifest)
        if record.get("audio")
    ]
    clips = [(name, said, path) for name, said, path in clips if said]
    header("probe_telephone: voice messages as recorded and after a telephone line")
    print(f"{len(clips)} voice clips from {manifest}")
    mesh = Mesh(ports={name: free_port() for name in ORDER}, quiet_logs=True)
    mesh.start()
    heard: dict[str, list[tuple[str, str, str]]] = {"as recorded": [], "telephone (8 kHz mu-law)": []}
    try:
        mesh.wait_healthy(timeout=300, progress=None)
        with connect(mesh.address("audio")) as channel:
            client = EncoderClient(channel)
            started = time.monotonic()
            for index, (name, said, path) in enumerate(clips):
                if time.monotonic() - started > MAX_SECONDS:
                    print(f"   stopped after {MAX_SECONDS} s: {index} of {len(clips)} clips")
                    break
                wav = path.read_bytes()
                for condition, data in (("as recorded", wav), ("telephone (8 kHz mu-law)", telephone_copy(wav))):
                    result = client.encode(data, "audio/wav", options=["transcript"], timeout=60)
                    heard[condition].append((name, said, result.side.transcript.text))
                if (index + 1) % 10 == 0:
                    print(f"   {index + 1}/{len(clips)} clips", flush=True)
    finally:
        mesh.stop()
    for condition, rows in heard.items():
        wrong = sum(word_errors(said, text)[0] for _, said, text in rows)
        total = sum(word_errors(said, "")[1] for _, said, _ in rows)
        print(f"   {condition:26s} word error rate {wrong / max(1, total):.3f} on {len(rows)} clips ({total} words)")
    recorded, phoned = heard.values()
    changed = [(a, b) for a, b in zip(recorded, phoned) if a[2].strip().lower() != b[2].strip().lower()]
    print(f"   heard differently: {len(changed)} of {len(phoned)}")
    for (name, said, before), (_, _, after) in changed[:8]:
        print(f'      {name}: said "{said}"\n         recorded  "{before}"\n         telephone "{after}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
