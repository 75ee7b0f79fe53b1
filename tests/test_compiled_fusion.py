"""The fusion ensemble on OpenVINO (router/compiled_fusion.py): torch's answers, padded or
not, from several threads at once; a stale cached conversion converted again; weights whose
answers OpenVINO would move run in torch. Real OpenVINO conversions, no mocks."""

import logging
import threading

import pytest
import torch

from modalmesh.router import compiled_fusion
from modalmesh.router.compiled_fusion import CompiledEnsemble, FusionEngine, compiled_ensemble
from modalmesh.router.fusion import SOURCES, FusionConfig, build_model
from tests.test_fusion import WIDTHS, evidence

OUTPUTS = ("logits", "probabilities", "regression", "gate_weights", "gate_scores", "member_gate_scores")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MODALMESH_CACHE_DIR", str(tmp_path))


def ensemble(seed: int = 1, **overrides):
    config = FusionConfig(labels=("a", "b", "c"), regression=("size",), input_widths=WIDTHS, width=16, heads=2, dropout=0.0, members=3, **overrides)
    torch.manual_seed(seed)
    built = build_model(config).eval()
    with torch.no_grad():
        for member in built.members:
            member.gate.prior.copy_(torch.randn(len(SOURCES)))
            for layer in member.layers:
                layer.attention.pair_bias.add_(torch.randn(3, 3))
    return built.stacked()


BATCH = [evidence(["text"], 1), evidence(["text", "image", "image_text", "audio", "audio_text"], 2), evidence(["image", "audio_text"], 3)]


@pytest.mark.parametrize("overrides", [{}, {"pooling": "attention", "regression_hidden": 8}])
def test_openvino_gives_torchs_answers_on_a_padded_batch(overrides):
    stacked = ensemble(**overrides)
    model = compiled_ensemble(stacked, "test", "float32", FusionEngine("openvino"))
    assert isinstance(model, CompiledEnsemble) and model.precision == "float32"
    outstanding = torch.tensor([[s in ("image", "audio") for s in SOURCES]] * len(BATCH))
    with torch.inference_mode():
        inputs = model.embed(BATCH)
        assert inputs.padding.any() and inputs.padding.shape[-1] % compiled_fusion.LENGTH_STEP  # padded, and padded again inside
        got, want = model.on_openvino(inputs), stacked(inputs, attention=False)
        weight, want_weight = model.outstanding_weight(inputs, got, outstanding), stacked.outstanding_weight(inputs, want, outstanding)
        explained = model(inputs, attention=True)  # an explanation keeps the attention weights: torch's own pass
    for name in OUTPUTS:
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-4, rtol=1e-4, msg=name)
    torch.testing.assert_close(weight, want_weight, atol=1e-4, rtol=1e-4)
    assert got.attention is None and explained.attention is not None
    # Each item alone: the answer it gets in the batch.
    with torch.inference_mode():
        for index, item in enumerate(BATCH):
            alone = model.on_openvino(model.embed([item])).probabilities[0]
            torch.testing.assert_close(alone, got.probabilities[index], atol=1e-5, rtol=1e-5)


def test_bfloat16_on_openvino_keeps_float32s_answers_to_a_hundredth():
    stacked = ensemble().set_precision("bfloat16")
    model = compiled_ensemble(stacked, "test", "bfloat16", FusionEngine("openvino"))
    assert isinstance(model, CompiledEnsemble) and model.precision == "bfloat16" and stacked.precision == "bfloat16"
    with torch.inference_mode():
        inputs = model.embed(BATCH)
        got, exact = model.on_openvino(inputs), stacked.set_precision("float32")(inputs, attention=False)
    torch.testing.assert_close(got.probabilities, exact.probabilities, atol=0.01, rtol=0)


def test_decisions_from_several_threads_at_once_are_each_their_own():
    model = compiled_ensemble(ensemble(), "test", "float32", FusionEngine("openvino", calls=2))
    items = [evidence(["text", "image", "audio"], seed) for seed in range(6)]
    with torch.inference_mode():
        serial = [model.on_openvino(model.embed([item])).probabilities for item in items]
    results: dict[tuple[int, int], torch.Tensor] = {}

    def decide(worker: int) -> None:
        with torch.inference_mode():
            for round_ in range(10):
                index = (worker + round_) % len(items)
                results[worker, round_] = model.on_openvino(model.embed([items[index]])).probabilities

    threads = [threading.Thread(target=decide, args=(worker,)) for worker in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 30
    for (worker, round_), probabilities in results.items():
        torch.testing.assert_close(probabilities, serial[(worker + round_) % len(items)], atol=1e-6, rtol=0)


def test_a_cached_conversion_of_other_weights_is_converted_again():
    other = compiled_ensemble(ensemble(seed=2), "same-key", "float32", FusionEngine("openvino"))
    assert isinstance(other, CompiledEnsemble)  # now cached under "same-key"
    stacked = ensemble(seed=1)
    model = compiled_ensemble(stacked, "same-key", "float32", FusionEngine("openvino"))
    assert isinstance(model, CompiledEnsemble)
    with torch.inference_mode():
        inputs = stacked.embed(BATCH)
        torch.testing.assert_close(model.on_openvino(inputs).probabilities, stacked(inputs, attention=False).probabilities, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(other.on_openvino(other.embed(BATCH)).probabilities, stacked(inputs, attention=False).probabilities, atol=1e-3)


def test_weights_whose_answers_openvino_would_move_run_in_torch(monkeypatch, caplog):
    monkeypatch.setattr(compiled_fusion, "PRECISION_TOLERANCE", -1.0)  # no conversion can pass: every load's check fails
    stacked = ensemble()
    with caplog.at_level(logging.WARNING, logger="modalmesh.router.compiled_fusion"):
        model = compiled_ensemble(stacked, "test", "float32", FusionEngine("openvino"), "the test model")
    assert model is stacked
    assert "the test model runs in torch: OpenVINO moved a probability" in caplog.text


def test_short_inputs_run_in_torch_and_long_ones_on_openvino():
    """Below OPENVINO_FROM tokens torch's own pass decides (as fast or faster there); from it
    on, OpenVINO, with torch's answers."""
    stacked = ensemble(max_tokens=128)
    model = compiled_ensemble(stacked, "test", "float32", FusionEngine("openvino"))
    assert isinstance(model, CompiledEnsemble)
    short = {"text": torch.randn(compiled_fusion.OPENVINO_FROM - 1, WIDTHS["text"])}
    long = {"text": torch.randn(compiled_fusion.OPENVINO_FROM, WIDTHS["text"])}
    with torch.inference_mode():
        inputs = model.embed([short])
        assert torch.equal(model(inputs, attention=False).probabilities, stacked(inputs, attention=False).probabilities)
        inputs = model.embed([long])
        got, want = model(inputs, attention=False).probabilities, stacked(inputs, attention=False).probabilities
        torch.testing.assert_close(got, model.on_openvino(inputs).probabilities, atol=0, rtol=0)  # OpenVINO's own numbers
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be one of openvino, torch, not 'tensorrt'"):
        FusionEngine("tensorrt")


@pytest.mark.slow
def test_the_shipped_triage_ensemble_decides_on_openvino_as_in_torch():
    """The router's default: the shipped weights load onto OpenVINO and decide as torch does,
    the status-line readings batched (several rows) included."""
    from modalmesh.router.tasks import SHIPPED_WEIGHTS, TASKS, decide, load_task

    spec = TASKS["screenshot_triage"]
    on_openvino = load_task(spec, str(SHIPPED_WEIGHTS), "float32", FusionEngine("openvino"))
    in_torch = load_task(spec, str(SHIPPED_WEIGHTS), "float32")
    assert isinstance(on_openvino.model, CompiledEnsemble) and not isinstance(in_torch.model, CompiledEnsemble)
    widths = in_torch.model.config.input_widths
    generator = torch.Generator().manual_seed(4)
    features = {source: torch.randn(count, widths[source], generator=generator) for source, count in zip(SOURCES, (17, 49, 6, 441, 18))}
    with torch.inference_mode():
        got = decide(on_openvino.model, spec, features, {}, attention=False, pointer=on_openvino.status_line)
        want = decide(in_torch.model, spec, features, {}, attention=False, pointer=in_torch.status_line)
    assert got.outputs.probabilities.shape[0] > 1  # several status-line readings, one batch
    torch.testing.assert_close(got.probabilities, want.probabilities, atol=1e-4, rtol=1e-4)
