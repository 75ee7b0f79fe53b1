"""Shared fixtures: tiny real models built in a temp folder, and real servers on 127.0.0.1.

The tiny BERT is random (nothing to download here), but it is saved with
`save_pretrained` and loaded by the service through the same `from_pretrained` code
as the bundled MiniLM, so the loading path under test is the real one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, os.cpu_count() or 1))

WORDS = (
    "the a my card payment failed checkout page declined credit i can't cannot log in password wrong app "
    "crashes open it where is parcel tracking week refund please help login error screen shows"
).split()


def build_tiny_bert(folder: Path, max_positions: int = 64) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    punctuation = list(".,!?'-") + [str(d) for d in range(10)]
    vocab = specials + sorted(set(WORDS)) + letters + punctuation
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=max_positions)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    BertModel(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def start_service(name: str, **overrides):
    """A real service (its bundled model unless `model` says otherwise) on a free port."""
    from modalmesh.cli import _service
    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server

    config = load_config(name, environ={}, **{"port": 0, "metrics_port": 0, "http_port": 0, "grace_seconds": 1.0, **overrides})
    return start_server(config, _service(name, config))


@pytest.fixture
def start_text_service(tiny_bert_dir):
    """Factory: start a real text service on a free loopback port; stopped at teardown."""
    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server
    from modalmesh.text.server import TextService

    handles = []

    def start(initialize: bool = True, service_class=TextService, **overrides):
        overrides = {"model": str(tiny_bert_dir), "port": 0, "metrics_port": 0, "grace_seconds": 2.0, **overrides}
        config = load_config("text", environ={}, **overrides)
        handle = start_server(config, service_class(config), initialize=initialize)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(grace=0.5)


@pytest.fixture
def text_service(start_text_service):
    return start_text_service()


@pytest.fixture
def text_channel(text_service):
    from modalmesh.common.client import connect

    with connect(text_service.address) as channel:
        yield channel


class Mesh:
    """A real mesh on 127.0.0.1: the three encoders on their bundled models and a router."""

    def __init__(self, **router_overrides) -> None:
        self.encoders = {name: start_service(name) for name in ("text", "vision", "audio")}
        self.router = self.start_router(**router_overrides)

    def start_router(self, **overrides):
        targets = {
            "text_target": self.encoders["text"].address,
            "vision_target": self.encoders["vision"].address,
            "audio_target": self.encoders["audio"].address,
        }
        return start_service("router", **{**targets, **overrides})

    def stop(self) -> None:
        for handle in (self.router, *self.encoders.values()):
            handle.stop(grace=0.5)


@pytest.fixture(scope="session")
def mesh():
    running = Mesh()
    yield running
    running.stop()
