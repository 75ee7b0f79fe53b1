"""The transcripts' domain language model: built from sentences, loaded by the real audio
service, tested on speech made by the speech engine."""

import json
import re

import numpy as np
import pytest

from modalmesh.audio.lm import BEGIN, END, build, word_errors, words
from modalmesh.common.client import EncoderClient, connect
from tests.conftest import start_service

SENTENCES = [
    "My card was declined at checkout.",
    "Where is my package?",
    "I can't sign in to my account.",
    "The app crashes when I open it.",
    "I am still waiting for my refund.",
    "How do I change the theme?",
    "My payment keeps failing.",
    "The parcel went to the wrong address.",
    "My password is not accepted.",
    "Please refund the broken item.",
]
# Said to both models: some exactly as in SENTENCES, some new sentences of the same words.
SPOKEN = ["Where is my package?", "My card was declined at checkout.", "I am still waiting for my refund.", "My parcel is not here.", "The app keeps crashing."]


def parse_arpa(text: str):
    unigram, backoff, bigram = {}, {}, {}
    section = None
    for line in text.splitlines():
        if line.startswith("\\"):
            section = line
            continue
        parts = line.split()
        if section == "\\1-grams:" and parts:
            unigram[parts[1]] = 10 ** float(parts[0])
            if len(parts) == 3:
                backoff[parts[1]] = 10 ** float(parts[2])
        elif section == "\\2-grams:" and parts:
            bigram[(parts[1], parts[2])] = 10 ** float(parts[0])
    counts = dict(re.findall(r"ngram (\d)=(\d+)", text))
    return unigram, backoff, bigram, counts


def test_the_bigram_model_is_a_distribution_in_every_context():
    vocabulary = {w for s in SENTENCES for w in words(s)} - {"theme"}  # one word the "dictionary" lacks
    model = build(SENTENCES, vocabulary)
    unigram, backoff, bigram, counts = parse_arpa(model.arpa)
    assert int(counts["1"]) == len(unigram) and int(counts["2"]) == len(bigram)
    assert model.dropped == ["theme"] and "theme" not in unigram and model.vocabulary == len(vocabulary)
    predicted = [w for w in unigram if w != BEGIN]  # what can follow a word: every word and </s>
    assert sum(unigram[w] for w in predicted) == pytest.approx(1.0, abs=1e-4)
    for context in [BEGIN] + sorted(vocabulary):
        total = sum(bigram[(context, w)] if (context, w) in bigram else backoff[context] * unigram[w] for w in predicted)
        assert total == pytest.approx(1.0, abs=1e-4), context
    # Seen pairs are likelier than the same word backed off to.
    assert bigram[("my", "card")] > backoff["my"] * unigram["card"]
    assert END in unigram and (BEGIN, "my") in bigram


def test_word_errors_count_substitutions_insertions_and_deletions():
    assert word_errors("where is my package", "where is my package") == (0, 4)
    assert word_errors("where is my package", "where is the package now") == (2, 4)  # one substituted, one inserted
    assert word_errors("My card was declined.", "card declined") == (2, 4)  # two deleted
    assert word_errors("hello", "") == (1, 1)


def test_sentences_without_a_known_word_build_nothing():
    with pytest.raises(ValueError, match="no sentence has a word"):
        build(["zzyzx qqq", ""], vocabulary={"hello"})


def test_the_audio_service_transcribes_with_a_domain_model(tmp_path):
    """Speech from the speech engine, transcribed by two real audio services: with the
    domain model every word comes from its vocabulary and fewer words are wrong."""
    from modalmesh.audio.speech import espeak, wav_bytes

    lm = tmp_path / "domain.arpa"
    lm.write_text(build(SENTENCES).arpa)
    vocabulary = {w for s in SENTENCES for w in words(s)}
    engine = espeak()
    clips = [wav_bytes(engine.synthesize(text, "en-us", 150), engine.sample_rate) for text in SPOKEN]
    errors = {}
    for name, overrides in (("general", {"asr_engine": "pocketsphinx"}), ("domain", {"asr_engine": "pocketsphinx", "asr_lm": str(lm)})):
        handle = start_service("audio", **overrides)
        try:
            with connect(handle.address) as channel:
                client = EncoderClient(channel)
                transcripts = [client.encode(clip, "audio/wav", options=["transcript"]).side.transcript.text for clip in clips]
        finally:
            handle.stop(grace=0.5)
        wrong, said = np.sum([word_errors(s, t) for s, t in zip(SPOKEN, transcripts)], axis=0)
        errors[name] = wrong / said
        if name == "domain":
            assert all(set(words(t)) <= vocabulary for t in transcripts), transcripts
            assert sum(len(words(t)) for t in transcripts) >= len(SPOKEN)  # it hears words, not silence
    assert errors["domain"] < errors["general"], errors


def test_a_missing_or_unreadable_model_stops_the_service_at_startup(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        start_service("audio", asr_engine="pocketsphinx", asr_lm=str(tmp_path / "missing.arpa"))
    bad = tmp_path / "bad.arpa"
    bad.write_text("not a language model\n")
    with pytest.raises(ValueError, match="cannot load it as an ARPA language model"):
        start_service("audio", asr_engine="pocketsphinx", asr_lm=str(bad))


def test_data_lm_builds_a_model_from_a_manifest(tmp_path, capsys):
    from modalmesh.cli import main

    manifest = tmp_path / "train.jsonl"
    records = [{"id": f"m{i}", "task": "screenshot_triage", "text": s, "label": "other"} for i, s in enumerate(SENTENCES + ["", "ShopFast is down"])]
    records[0]["extra"] = {"voice": "The tracking page is empty."}  # what a voice message said
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "lm" / "triage.arpa"
    assert main(["data", "lm", "--data", str(manifest), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    unigram, _, _, _ = parse_arpa(out.read_text())
    assert {"package", "refund", "down"} <= set(unigram) and "shopfast" not in unigram
    assert f"from {len(SENTENCES) + 1} sentences" in printed and "shopfast" in printed  # left out, and said so
    assert "tracking" not in unigram  # only the `text` fields by default
    assert main(["data", "lm", "--data", str(manifest), "--field", "text", "--field", "extra.voice", "--out", str(out)]) == 0
    assert {"tracking", "package"} <= set(parse_arpa(out.read_text())[0])
    assert main(["data", "lm", "--data", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_features_extracted_with_another_language_model_are_cached_apart(tmp_path, monkeypatch):
    from modalmesh.router.features import FeatureCache
    from modalmesh.router.tasks import TASKS

    record = {"id": "a", "text": "where is my parcel"}
    cache = FeatureCache.for_task(TASKS["screenshot_triage"], tmp_path / "m.jsonl", tmp_path / "features")
    general = cache.key(record)
    lm = tmp_path / "a.arpa"
    lm.write_text(build(SENTENCES).arpa)
    monkeypatch.setenv("MODALMESH_AUDIO_ASR_LM", str(lm))
    first = cache.key(record)
    lm.write_text(build(SENTENCES[:5]).arpa)  # the same path, another model
    assert len({general, first, cache.key(record)}) == 3
