"""How far can the text encoder carry screenshot-triage screen wordings it never saw?

    .venv/bin/python benchmarks/probe_wordings.py            # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/probe_wordings.py --quick    # frozen variants only, ~20 s
    .venv/bin/python benchmarks/probe_wordings.py --quick --model DIR   # another text model

A text-only probe on the screen wordings of services/data/triage.py: train on the train
pool, score on the val and test pools (weighted as the generator draws them: fixed
phrases 40%, composed ones 60%). Variants, all on the bundled all-MiniLM-L6-v2:

  frozen-mean      the service's pooled vector (mean of tokens), linear head
  frozen-attention attention pooling over the frozen token vectors, linear head
  finetune-top-k   the top k transformer layers trained with the head (k = 1, 2), as
                   `modalmesh train --finetune-top` does

Prints accuracy per pool and the test phrases each variant gets wrong, and for the frozen
mean a wording-held-out cross-validation on the train pool (folds by wording family, as
benchmarks/cv_wordings.py): with validation near 1.000, that and validation are what to
choose a text model by, not the test pool. It is a probe: the router fuses more than this
(pixels, the customer's text, a transcript).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_text import machine, write_results  # noqa: E402
from benchmarks.cv_wordings import fold_of, wording_families  # noqa: E402


def wording_sets(split: str):
    from modalmesh.data.triage import LABELS, SCREEN_TEMPLATES, SCREENS, pool, wordings

    texts, labels, weights, fixed_phrases = [], [], [], set()
    for index, label in enumerate(LABELS):
        fixed = pool(SCREENS[label], split)
        composed = sorted(wordings(label, split, SCREENS, SCREEN_TEMPLATES) - set(fixed))
        texts += fixed + composed
        labels += [index] * (len(fixed) + len(composed))
        weights += [0.4 / len(fixed)] * len(fixed) + [0.6 / len(composed)] * len(composed)
        fixed_phrases.update(fixed)
    return texts, torch.tensor(labels), torch.tensor(weights), fixed_phrases


class Probe(torch.nn.Module):
    def __init__(self, width: int, top_layers: list, pooling: str) -> None:
        super().__init__()
        self.top = torch.nn.ModuleList(top_layers)
        self.pooling = pooling
        self.query = torch.nn.Parameter(torch.randn(width) * 0.02)
        self.head = torch.nn.Linear(width, 6)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = (1.0 - mask[:, None, None, :].float()) * -1e9
        for layer in self.top:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        if self.pooling == "attention":
            scores = (hidden @ self.query).masked_fill(~mask.bool(), -1e9)
            pooled = (scores.softmax(-1)[..., None] * hidden).sum(1)
        else:
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(F.normalize(pooled, dim=-1) * 10)


def fit(probe: Probe, hidden, mask, labels, epochs: int) -> Probe:
    """A probe trained the same way for every variant and fold: the head at 1e-2, the
    encoder's top layers it fine-tunes (if any) at 3e-5."""
    head = [p for n, p in probe.named_parameters() if not n.startswith("top.")]
    top = [p for layer in probe.top for p in layer.parameters()]
    groups = [{"params": head, "lr": 1e-2}] + ([{"params": top, "lr": 3e-5}] if top else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    for _ in range(epochs):
        probe.train()
        order = torch.randperm(len(labels))
        for i in range(0, len(order), 64):
            index = order[i : i + 64]
            loss = F.cross_entropy(probe(hidden[index], mask[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return probe.eval()


def family_cv(train_set, states, width: int, folds: int, epochs: int) -> dict:
    """Frozen mean pooling, a linear head per fold, each fold's wording families held out."""
    texts, labels, weights, _ = train_set
    family = wording_families()
    fold = torch.tensor([fold_of(family.get(t, t), folds) for t in texts])
    hidden, mask = states(texts)
    scores = []
    for k in range(folds):
        held = fold == k
        torch.manual_seed(0)
        probe = fit(Probe(width, [], "mean"), hidden[~held], mask[~held], labels[~held], epochs)
        with torch.no_grad():
            correct = (probe(hidden[held], mask[held]).argmax(-1) == labels[held]).float()
        scores.append(round(float((correct * weights[held]).sum() / weights[held].sum()), 3))
    return {"folds": scores, "mean": round(sum(scores) / folds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="frozen variants only")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--model", default="", help="text model directory (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--folds", type=int, default=4, help="wording-held-out folds of the train pool (frozen mean)")
    parser.add_argument("--out", default="bench-results/probe_wordings.json")
    args = parser.parse_args()

    from modalmesh.text.model import TextEncoder

    encoder = TextEncoder(args.model)
    tokenizer, model = encoder.tokenizer, encoder.model
    depth = model.config.num_hidden_layers
    sets = {split: wording_sets(split) for split in ("train", "val", "test")}

    def hidden_states(texts, layer):
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return model(**batch, output_hidden_states=True).hidden_states[layer], batch["attention_mask"]

    variants = [("frozen-mean", 0, "mean"), ("frozen-attention", 0, "attention")]
    if not args.quick:
        variants += [("finetune-top-1", 1, "mean"), ("finetune-top-2", 2, "mean")]
    results = {"machine": machine(), "command": " ".join(sys.argv), "model": encoder.version, "pool_sizes": {s: len(v[0]) for s, v in sets.items()}}
    print(f"text model {encoder.version} ({encoder.width}-d)", flush=True)
    results["frozen-mean_cv"] = cv = family_cv(sets["train"], lambda texts: hidden_states(texts, depth), model.config.hidden_size, args.folds, args.epochs)
    print(f"frozen-mean cv     {cv['mean']:.3f} over {args.folds} wording-held-out folds of the train pool {cv['folds']}", flush=True)
    for name, k, pooling in variants:
        torch.manual_seed(0)
        start_layer = depth - k
        cached = {split: hidden_states(sets[split][0], start_layer) for split in sets}
        probe = Probe(model.config.hidden_size, [copy.deepcopy(model.encoder.layer[i]) for i in range(start_layer, depth)], pooling)
        started = time.perf_counter()
        fit(probe, *cached["train"], sets["train"][1], args.epochs)
        row = {"train_seconds": round(time.perf_counter() - started, 1)}
        for split in ("val", "test"):
            with torch.no_grad():
                predicted = probe(*cached[split]).argmax(-1)
            texts, truth, weights, fixed = sets[split]
            correct = (predicted == truth).float()
            row[f"{split}_accuracy"] = round(float((correct * weights).sum() / weights.sum()), 3)
            if split == "test":
                row["test_fixed_phrases_wrong"] = [t for t, ok in zip(texts, correct) if not ok and t in fixed]
                row["test_composed_wrong"] = int(sum(1 for t, ok in zip(texts, correct) if not ok and t not in fixed))
        results[name] = row
        print(
            f"{name:18s} val {row['val_accuracy']:.3f}  test {row['test_accuracy']:.3f}  "
            f"({row['train_seconds']} s)  wrong: {row['test_composed_wrong']} composed, fixed {row['test_fixed_phrases_wrong']}",
            flush=True,
        )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
