"""Transcripts with PocketSphinx's general English model vs a domain model built from the
training manifest's texts (`modalmesh data lm`): word error rate and time per clip.

    .venv/bin/python benchmarks/bench_asr_lm.py [--task screenshot_triage] [--limit N]

Needs the datasets `make weights` generates (data/triage, data/medical). For each task the
model is built from train.jsonl's `text` fields (the customer's messages; the patient
records) and what its voice messages / dictated notes say (`extra.voice`,
`extra.dictation`), then the voice messages / dictated notes of the val and test splits
(their wordings never seen in training) are transcribed by the audio service's own code, in this
process, once with each model. Word error rate against what the speech engine was told to
say (the manifest's `extra.voice` / `extra.dictation`), pooled over the clips.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import header, machine, task_arguments, write_results  # noqa: E402

DATA = {"screenshot_triage": (REPO / "data" / "triage", "voice"), "medical_report": (REPO / "data" / "medical", "dictation")}


def transcribe_all(lm: str, clips: list[tuple[str, bytes]]) -> tuple[list[str], list[float]]:
    from modalmesh.audio.server import AudioService
    from modalmesh.common.config import load_config
    from modalmesh.router.features import LocalEncoders

    service = AudioService(load_config("audio", environ={}, asr_lm=lm or None))
    service.initialize()
    try:
        texts, ms = [], []
        for _, wav in clips:
            started = time.perf_counter()
            result = LocalEncoders._encode(service, wav, "audio/wav", ["transcript"])
            ms.append(result.pooled_message.timings_ms.get("transcript", (time.perf_counter() - started) * 1000))
            texts.append(result.side.transcript.text)
        return texts, ms
    finally:
        service.finalize()


def main() -> int:
    from modalmesh.audio.lm import build, sentences_from_manifests, word_errors
    from modalmesh.data.generate import read_manifest

    args = task_arguments(__doc__.splitlines()[0], DATA, "asr_lm.json", "clips")
    header("ModalMesh transcript language model benchmark")
    results = {}
    for task in args.task or sorted(DATA):
        folder, said_field = DATA[task]
        if not (folder / "train.jsonl").is_file():
            print(f"{task}: {folder}/train.jsonl is missing: run `make weights` (or modalmesh data generate) first")
            return 2
        # What callers write and what they said, in the training split (never val or test wordings).
        fields = ("text", f"extra.{said_field}")
        model = build(sentences_from_manifests([folder / "train.jsonl"], fields))
        lm = Path(tempfile.mkdtemp()) / f"{task}.arpa"
        lm.write_text(model.arpa)
        print(
            f"\n{task}: domain model from {folder}/train.jsonl ({' + '.join(fields)}; "
            f"modalmesh data lm --data {folder.relative_to(REPO)}/train.jsonl {' '.join('--field ' + f for f in fields)}): "
            f"{model.vocabulary} words, {model.bigrams} word pairs"
        )
        results[task] = {"vocabulary": model.vocabulary, "bigrams": model.bigrams}
        for split in ("val", "test"):
            records = [r for r in read_manifest(folder / f"{split}.jsonl") if r.get("audio") and r["extra"].get(said_field)]
            records = records[: args.limit] if args.limit else records
            clips = [(r["extra"][said_field], (folder / r["audio"]).read_bytes()) for r in records]
            row = {}
            for name, path in (("general", ""), ("domain", str(lm))):
                texts, ms = transcribe_all(path, clips)
                wrong = sum(word_errors(said, text)[0] for (said, _), text in zip(clips, texts))
                total = sum(word_errors(said, "")[1] for said, _ in clips)
                row[name] = {
                    "wer": wrong / total,
                    "median_ms": statistics.median(ms),
                    "mean_ms": statistics.fmean(ms),
                    "example": {"said": clips[0][0], "heard": texts[0]},
                }
                print(
                    f"   {split:4s} {name:7s} {len(clips):3d} clips   WER {wrong / total:.3f}   "
                    f"transcript median {statistics.median(ms):6.0f} ms   mean {statistics.fmean(ms):6.0f} ms"
                    f"   e.g. {clips[0][0]!r} -> {texts[0]!r}"
                )
            print(
                f"   {split:4s} domain / general: WER {row['domain']['wer'] / row['general']['wer']:.2f}x, "
                f"time {row['domain']['median_ms'] / row['general']['median_ms']:.2f}x (median)"
            )
            results[task][split] = row
    write_results(args.out, {"machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
