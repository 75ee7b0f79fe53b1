"""Write the example inputs in examples/ (small files, committed): one command.

.venv/bin/python tools/make_examples.py
"""

from pathlib import Path

from modalmesh.audio.speech import espeak, wav_bytes
from modalmesh.data.ct import make_phantom, write_ct_dicom
from modalmesh.data.screens import png_bytes, render_screenshot

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    EXAMPLES.mkdir(exist_ok=True)
    (EXAMPLES / "screenshot.png").write_bytes(png_bytes(render_screenshot("Error 402: Payment declined", size=(800, 500)), optimize=True))
    (EXAMPLES / "message.txt").write_text("Hi, I tried to pay for my order three times and it keeps failing. Was I charged?\n")
    engine = espeak()
    voice = engine.synthesize("Hello, my payment failed at checkout. Please help me.", "en-us", 150)
    (EXAMPLES / "voice.wav").write_bytes(wav_bytes(voice[::2], engine.sample_rate // 2))  # 11 kHz keeps it small
    phantom = make_phantom(seed=1)  # a nodule in the left lung
    spacing = (phantom.pixel_spacing_mm, phantom.pixel_spacing_mm)
    (EXAMPLES / "ct.dcm").write_bytes(write_ct_dicom(phantom.hounsfield, spacing, uid_seed="modalmesh-example-ct"))
    (EXAMPLES / "record.txt").write_text("67-year-old man, 40 pack-years smoking history, persistent dry cough for two months, weight loss of 3 kg.\n")
    print(f"wrote examples: {phantom.label}, {phantom.largest_mm:.1f} mm, {phantom.side} lung in ct.dcm")
    for path in sorted(EXAMPLES.iterdir()):
        print(f"  {path.name:16s} {path.stat().st_size:8d} bytes")


if __name__ == "__main__":
    main()
