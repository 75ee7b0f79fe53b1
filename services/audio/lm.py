"""A domain language model for transcripts: a word bigram model in ARPA format, built
from sentences like the ones callers say (a manifest's `text` fields).

PocketSphinx's bundled model is general English; on short support messages in synthetic
speech it gets most words wrong and takes about a second per clip. A small bigram model of
the domain's own sentences narrows the search to words and word pairs that occur there:
fewer errors on new sentences about the same things, and several times faster decoding
(`benchmarks/bench_asr_lm.py`). The price is a closed vocabulary: a word the model has not
seen cannot be transcribed, so build it from a broad set of sentences.

    modalmesh data lm --data data/triage/train.jsonl --out triage.arpa
    modalmesh serve audio --asr-lm triage.arpa      # or MODALMESH_AUDIO_ASR_LM=triage.arpa

Smoothing: absolute discounting (D = 0.5) of the bigrams with Katz back-off to add-one
unigrams; every context's distribution sums to one (tested). Words missing from
PocketSphinx's pronunciation dictionary are left out (PocketSphinx could not say them).
"""

from __future__ import annotations

import collections
import math
import re
from dataclasses import dataclass
from pathlib import Path

BEGIN, END = "<s>", "</s>"
DISCOUNT = 0.5
WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def dictionary_path() -> Path:
    import pocketsphinx

    return Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"


def dictionary_words(path: Path | None = None) -> set[str]:
    """The words PocketSphinx can pronounce (alternative pronunciations folded)."""
    words = set()
    with open(path or dictionary_path(), encoding="utf-8") as handle:
        for line in handle:
            word = line.split(" ", 1)[0]
            words.add(re.sub(r"\(\d+\)$", "", word))
    return words


def words(text: str) -> list[str]:
    """Lower-case words as PocketSphinx writes them ("can't" stays one word)."""
    return WORD.findall(text.lower())


@dataclass
class LanguageModel:
    arpa: str  # the model, ARPA text
    sentences: int
    vocabulary: int  # words, without <s> and </s>
    bigrams: int
    dropped: list[str]  # words left out: not in the pronunciation dictionary


def build(sentences: list[str], vocabulary: set[str] | None = None, discount: float = DISCOUNT) -> LanguageModel:
    """A bigram model of `sentences` over the words in `vocabulary` (default: the dictionary's)."""
    vocabulary = dictionary_words() if vocabulary is None else vocabulary
    unigrams: collections.Counter[str] = collections.Counter()
    bigrams: collections.Counter[tuple[str, str]] = collections.Counter()
    dropped: collections.Counter[str] = collections.Counter()
    used = 0
    for sentence in sentences:
        tokens = words(sentence)
        dropped.update(w for w in tokens if w not in vocabulary)
        tokens = [w for w in tokens if w in vocabulary]
        if not tokens:
            continue
        used += 1
        padded = [BEGIN, *tokens, END]
        unigrams.update(padded)
        bigrams.update(zip(padded, padded[1:]))
    if not used:
        raise ValueError("no sentence has a word the pronunciation dictionary knows: nothing to build a model from")
    # Unigrams: add-one over the words that can follow something (<s> never does).
    predicted = [w for w in unigrams if w != BEGIN]
    total = sum(unigrams[w] for w in predicted)
    unigram = {w: (unigrams[w] + 1) / (total + len(predicted)) for w in predicted}
    # Bigrams: discounted counts; what the discount frees goes to the unigrams of the unseen.
    following: collections.defaultdict[str, dict[str, int]] = collections.defaultdict(dict)
    for (first, second), count in bigrams.items():
        following[first][second] = count
    bigram, backoff = {}, {}
    for first, seconds in following.items():
        context = sum(seconds.values())
        for second, count in seconds.items():
            bigram[(first, second)] = (count - discount) / context
        freed = 1.0 - sum(bigram[(first, s)] for s in seconds)
        unseen = 1.0 - sum(unigram[s] for s in seconds)
        backoff[first] = freed / unseen if unseen > 1e-12 else 1.0
    lines = ["\\data\\", f"ngram 1={len(unigram) + 1}", f"ngram 2={len(bigram)}", "", "\\1-grams:"]
    lines.append(f"-99.0000 {BEGIN} {math.log10(backoff.get(BEGIN, 1.0)):.6f}")
    for word in sorted(unigram):
        back = f" {math.log10(backoff[word]):.6f}" if word in backoff else ""
        lines.append(f"{math.log10(unigram[word]):.6f} {word}{back}")
    lines += ["", "\\2-grams:"]
    lines += [f"{math.log10(p):.6f} {first} {second}" for (first, second), p in sorted(bigram.items())]
    lines += ["", "\\end\\", ""]
    return LanguageModel("\n".join(lines), used, len(unigram) - 1, len(bigram), sorted(dropped))


def sentences_from_manifests(paths: list[str | Path], fields: tuple[str, ...] = ("text",)) -> list[str]:
    """The sentences in the manifests' in-scope records: each of `fields`, a key or a dotted
    path into the record ("text", the caller's message; "extra.voice", what a generated
    voice message says); missing and empty ones left out."""
    from modalmesh.data.generate import read_manifest, record_scope

    sentences: list[str] = []
    for path in paths:
        for record in read_manifest(path):
            if record_scope(record) != "in":
                continue
            for name in fields:
                value: object = record
                for key in name.split("."):
                    value = value.get(key) if isinstance(value, dict) else None
                if isinstance(value, str) and value.strip():
                    sentences.append(value)
    return sentences


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Word-level edit distance (substitutions, insertions, deletions) between a transcript
    and what was said, and the number of words said: a word error rate is their ratio."""
    said, heard = words(reference), words(hypothesis)
    row = list(range(len(heard) + 1))
    for i, word in enumerate(said, 1):
        previous, row = row, [i] + [0] * len(heard)
        for j, other in enumerate(heard, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (word != other))
    return row[len(heard)], len(said)
