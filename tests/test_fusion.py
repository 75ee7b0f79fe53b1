"""The fusion model's math: gate, modality-aware attention, padding, subsets, order."""

import itertools

import pytest
import torch

from modalmesh.router.fusion import (
    SOURCES,
    FusionConfig,
    FusionInputs,
    FusionModel,
    attention_mass,
    embed_batch,
    modality_gate_weights,
    normalised_entropy,
)

WIDTHS = {"text": 12, "image": 20, "image_text": 12, "audio": 8, "audio_text": 12}
TOKENS = {"text": 5, "image": 9, "image_text": 3, "audio": 100, "audio_text": 4}


def make_model(**overrides) -> FusionModel:
    torch.manual_seed(0)
    config = FusionConfig(labels=("a", "b", "c"), regression=("size",), input_widths=WIDTHS, width=16, heads=2, dropout=0.0, **overrides)
    return FusionModel(config).eval()


def evidence(sources, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {s: torch.randn(TOKENS[s], WIDTHS[s], generator=generator) for s in sources}


def test_gate_sums_to_one_over_present_sources_and_gives_absent_ones_zero():
    model = make_model()
    with torch.no_grad():
        outputs = model(model.embed([evidence(["text", "image"]), evidence(["audio", "audio_text", "text"])]))
    weights = outputs.gate_weights
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2))
    assert weights[0, SOURCES.index("audio")] == 0 and weights[0, SOURCES.index("image_text")] == 0
    assert weights[1, SOURCES.index("image")] == 0
    assert (weights[0, [SOURCES.index("text"), SOURCES.index("image")]] > 0).all()
    torch.testing.assert_close(modality_gate_weights(weights).sum(dim=-1), torch.ones(2))


def test_padding_gets_no_attention():
    model = make_model()
    with torch.no_grad():
        # The first item is short, so it is padded up to the second's length.
        outputs = model(model.embed([evidence(["text"]), evidence(["text", "image", "audio"])]))
    attention = outputs.attention[0]  # [H, T, T]
    padded = outputs.padding[0]
    assert padded.any()
    assert torch.all(attention[:, :, padded] == 0)
    torch.testing.assert_close(attention[:, ~padded][:, :, ~padded].sum(dim=-1), torch.ones(2, int((~padded).sum())))


def test_a_large_cross_modal_penalty_drives_cross_modal_attention_to_zero():
    with torch.no_grad():
        mild = make_model(cross_modal_penalty=0.0)
        harsh = make_model(cross_modal_penalty=-30.0)
        items = [evidence(["text", "image", "audio"])]
        mild_mass = attention_mass(mild(mild.embed(items)))
        harsh_mass = attention_mass(harsh(harsh.embed(items)))
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    assert mild_mass[off_diagonal].max() > 0.05
    assert harsh_mass[off_diagonal].max() < 1e-6
    torch.testing.assert_close(harsh_mass.sum(dim=-1), torch.ones(3))


def test_pair_bias_starts_at_zero_within_and_the_penalty_across():
    model = make_model(cross_modal_penalty=-2.5)
    bias = model.layers[0].attention.pair_bias
    assert torch.all(bias.diagonal() == 0)
    assert torch.all(bias[~torch.eye(3, dtype=torch.bool)] == -2.5)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_the_model_runs_on_every_subset_of_sources(count, pooling):
    model = make_model(pooling=pooling)
    for subset in itertools.combinations(SOURCES, count):
        with torch.no_grad():
            outputs = model(model.embed([evidence(subset)]))
        assert torch.isfinite(outputs.probabilities).all() and torch.isfinite(outputs.regression).all()
        torch.testing.assert_close(outputs.probabilities.sum(), torch.tensor(1.0))
        assert set(torch.nonzero(outputs.gate_weights[0]).flatten().tolist()) == {SOURCES.index(s) for s in subset}


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_results_do_not_depend_on_the_order_of_modalities(pooling):
    model = make_model(pooling=pooling)
    items = evidence(["text", "image", "audio", "image_text"])
    with torch.no_grad():
        inputs = model.embed([items])
        reference = model(inputs)
        # Same tokens, sources laid out in reverse order.
        order = torch.cat([torch.nonzero(inputs.token_source[0] == SOURCES.index(s)).flatten() for s in reversed(SOURCES)])
        permuted = FusionInputs(inputs.tokens[:, order], inputs.token_source[:, order], inputs.padding[:, order], inputs.present)
        shuffled = model(permuted)
        # And a dict built in another order gives the same embedding.
        rebuilt = model(model.embed([dict(reversed(list(items.items())))]))
    torch.testing.assert_close(shuffled.probabilities, reference.probabilities)
    torch.testing.assert_close(shuffled.gate_weights, reference.gate_weights)
    torch.testing.assert_close(rebuilt.probabilities, reference.probabilities)


def test_long_sequences_are_pooled_to_max_tokens():
    model = make_model(max_tokens=16)
    inputs = model.embed([evidence(["audio"])])  # 100 frames
    assert inputs.tokens.shape[1] == 16


def test_a_source_can_be_pooled_harder_than_the_others():
    """FusionConfig.source_tokens: the audio frames pooled to 4 tokens, the image's patches
    to 8, the message's tokens to max_tokens (16): a decision with fewer tokens; the config
    round-trips through its dict (config.json) and a bad limit is refused at once."""
    model = make_model(max_tokens=16, source_tokens={"audio": 4, "image": 8})
    inputs = model.embed([evidence(["audio", "image", "text"])])
    counts = torch.bincount(inputs.token_source[0], minlength=len(SOURCES))
    assert counts[SOURCES.index("audio")] == 4 and counts[SOURCES.index("image")] == min(8, TOKENS["image"])
    assert counts[SOURCES.index("text")] == min(16, TOKENS["text"])
    assert FusionConfig.from_dict(model.config.to_dict()).token_limit("audio") == 4
    assert make_model(max_tokens=16, source_tokens={"audio": 32}).config.token_limit("audio") == 16  # never above max_tokens
    with pytest.raises(ValueError, match="source_tokens: 'voice' is not one of"):
        make_model(source_tokens={"voice": 4})
    with pytest.raises(ValueError, match="source_tokens: audio must be at least 1 token, not 0"):
        make_model(source_tokens={"audio": 0})


def test_outstanding_weight_uses_the_prior_of_missing_sources():
    model = make_model()
    with torch.no_grad():
        model.gate.prior.copy_(torch.tensor([0.0, 0.0, -20.0, 0.0, 20.0]))
        outputs = model(model.embed([evidence(["text", "image"])]))
        present = outputs.gate_weights > 0
        ocr = torch.zeros_like(present)
        ocr[0, SOURCES.index("image_text")] = True
        transcript = torch.zeros_like(present)
        transcript[0, SOURCES.index("audio_text")] = True
        assert model.gate.outstanding_weight(outputs.gate_scores, present, ocr) < 1e-6  # prior -20: cannot matter
        assert model.gate.outstanding_weight(outputs.gate_scores, present, transcript) > 0.99  # prior +20: would dominate


def test_normalised_entropy():
    assert normalised_entropy(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(0.0, abs=1e-6)
    assert normalised_entropy(torch.tensor([1 / 3] * 3)) == pytest.approx(1.0)
    assert normalised_entropy(torch.tensor([1.0]), count=1) == 0


def test_gate_offsets_turn_a_source_down_but_not_when_it_is_alone():
    model = make_model(gate_offsets={"audio_text": -30.0})
    both = model(model.embed([evidence(["text", "audio_text"])]))
    alone = model(model.embed([evidence(["audio_text"])]))
    transcript = SOURCES.index("audio_text")
    assert float(both.gate_weights[0, transcript]) < 1e-9 and float(alone.gate_weights[0, transcript]) == pytest.approx(1.0)
    outstanding = torch.zeros(1, len(SOURCES), dtype=torch.bool)
    outstanding[0, transcript] = True
    present = both.gate_weights > 0
    assert float(model.gate.outstanding_weight(both.gate_scores, present, outstanding)) < 1e-9  # not worth waiting for
    reloaded = FusionModel(FusionConfig.from_dict(model.config.to_dict()))
    assert reloaded.config.gate_offsets == {"audio_text": -30.0}
    assert float(reloaded.gate.offset[transcript]) == -30.0 and "gate.offset" not in reloaded.state_dict()


def test_gate_calibration_turns_down_a_source_that_misleads_on_new_data():
    """Trained where both sources carry the label; on validation the transcript is shuffled."""
    from modalmesh.router.train import Example, calibrate_gate

    torch.manual_seed(0)
    model = make_model()
    generator = torch.Generator().manual_seed(1)
    codes = torch.randn(3, 12, generator=generator)

    def example(label, transcript_label):
        features = {
            "text": codes[label] + 0.8 * torch.randn(2, 12, generator=generator),
            "audio_text": codes[transcript_label] + 0.3 * torch.randn(2, 12, generator=generator),
        }
        return Example(features, label, torch.zeros(1), torch.zeros(1, dtype=torch.bool), {}, torch.zeros(1))

    train_set = [example(i % 3, i % 3) for i in range(90)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        logits = model(model.embed([e.features for e in train_set])).logits
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([e.label for e in train_set]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    val = [example(i % 3, (i + 1 + i // 3) % 3) for i in range(60)]

    def accuracy():
        with torch.no_grad():
            predicted = model(model.embed([e.features for e in val])).logits.argmax(-1)
        return float((predicted == torch.tensor([e.label for e in val])).float().mean())

    before = accuracy()
    offsets = calibrate_gate(model, val)
    assert offsets["audio_text"] < offsets["text"] - 1.0
    assert model.config.gate_offsets == offsets and accuracy() > before


def _ensemble(**overrides):
    """Three members with different random weights (and temperatures, gate offsets, priors)."""
    from modalmesh.router.fusion import build_model

    config = FusionConfig(
        labels=("a", "b", "c"),
        regression=("size",),
        input_widths=WIDTHS,
        width=16,
        heads=2,
        dropout=0.0,
        members=3,
        gate_offsets=[{"text": 0.0}, {"image": -0.5}, {"audio_text": 0.7}],
        **overrides,
    )
    torch.manual_seed(1)
    ensemble = build_model(config).eval()
    with torch.no_grad():
        for i, member in enumerate(ensemble.members):
            member.log_temperature.fill_(0.2 * i - 0.1)
            member.gate.prior.copy_(torch.randn(len(SOURCES)))
            for layer in member.layers:
                layer.attention.pair_bias.add_(torch.randn(3, 3))
    return ensemble


@pytest.mark.parametrize("overrides", [{}, {"pooling": "attention", "regression_hidden": 8}, {"regression_from": "image"}])
def test_the_stacked_ensemble_gives_the_ensembles_numbers(overrides):
    """The router runs an ensemble as one batched model (StackedEnsemble): same outputs,
    same predicted outstanding weight, on a padded batch of different subsets."""
    ensemble = _ensemble(**overrides)
    stacked = ensemble.stacked()
    batch = [evidence(["text"], 1), evidence(["text", "image", "audio", "audio_text"], 2), evidence(["image_text", "image"], 3)]
    outstanding = torch.tensor([[s in ("image", "audio") for s in SOURCES]] * 3)
    with torch.no_grad():
        inputs, stacked_inputs = ensemble.embed(batch), stacked.embed(batch)
        expected, got = ensemble(inputs), stacked(stacked_inputs)
        expected_weight = ensemble.outstanding_weight(inputs, expected, outstanding)
        got_weight = stacked.outstanding_weight(stacked_inputs, got, outstanding)
    assert got.padding.any()  # the first item is padded
    for name in ("logits", "probabilities", "regression", "gate_weights", "gate_scores", "attention"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=2e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(got_weight, expected_weight, atol=2e-6, rtol=1e-5)
    assert not torch.allclose(expected.members[0].probabilities, expected.members[1].probabilities)  # members differ


@pytest.mark.parametrize("stacked", [False, True])
def test_not_keeping_attention_gives_the_same_answer(stacked):
    """attention=False (the router's path unless asked to explain) runs a fused kernel
    and leaves outputs.attention None; every other output is the same, padding included."""
    model = _ensemble().stacked() if stacked else make_model()
    batch = [evidence(["text"], 4), evidence(["text", "image", "audio"], 5)]
    with torch.no_grad():
        inputs = model.embed(batch)
        kept, fused = model(inputs), model(inputs, attention=False)
    assert kept.attention is not None and fused.attention is None
    for name in ("logits", "probabilities", "regression", "gate_weights", "gate_scores"):
        torch.testing.assert_close(getattr(fused, name), getattr(kept, name), atol=2e-6, rtol=1e-5, msg=name)
        assert torch.isfinite(getattr(fused, name)).all()


@pytest.mark.parametrize("stacked", [False, True])
def test_a_tensor_several_items_share_is_projected_once_with_the_same_tokens(stacked):
    """The readings of one screen share every source but the status paragraph: embed
    projects each shared tensor once, and the tokens are those of copies projected apart."""
    model = _ensemble().stacked() if stacked else make_model()
    shared = evidence(["text", "image", "audio"], 6)
    readings = [{**shared, "image_text": torch.randn(1, WIDTHS["image_text"])} for _ in range(3)]
    copies = [{s: f.clone() for s, f in reading.items()} for reading in readings]
    with torch.no_grad():
        together, apart = model.embed(readings), model.embed(copies)
    assert torch.equal(together.tokens, apart.tokens) and torch.equal(together.token_source, apart.token_source)
    projected = []
    embed_batch(readings, 64, lambda source, features: projected.append(source) or torch.zeros(features.shape[0], 4))
    assert sorted(projected) == ["audio", "image", "image_text", "image_text", "image_text", "text"]


@pytest.mark.parametrize("kind", ["model", "ensemble", "stacked"])
def test_a_request_projects_each_source_once_for_every_decision_with_the_same_tokens(kind):
    """ProjectedTokens: one request decides again as encoders answer and reads each
    modality alone; a source's tensor is projected once per model for all of them, and the
    tokens are those a fresh embed gives. An ensemble's members each project their own."""
    from concurrent.futures import ThreadPoolExecutor

    from modalmesh.router.fusion import ProjectedTokens

    model = {"model": make_model, "ensemble": _ensemble, "stacked": lambda: _ensemble().stacked()}[kind]()
    early = evidence(["text", "image"], 7)
    late = {**early, **evidence(["audio", "audio_text"], 8)}
    projections = ProjectedTokens()
    with torch.no_grad():
        first = model.embed([early], projections)
        again = model.embed([late], projections)
        fresh = model.embed([{s: f.clone() for s, f in late.items()}])
    for got, want in ((again, fresh), (first, model.embed([early]))):
        for a, b in zip(got if kind == "ensemble" else [got], want if kind == "ensemble" else [want]):
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.token_source, b.token_source) and torch.equal(a.padding, b.padding)
    members = 3 if kind == "ensemble" else 1
    assert len(projections) == members * 4  # text, image, audio, audio_text: once each (per member)

    # Whoever asks first computes; a later or concurrent asker gets that result.
    calls, owner, features = [], object(), torch.ones(2, 3)

    def project():
        calls.append(1)
        return features * 2

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: projections.get(owner, "text", features, project), range(8)))
    assert len(calls) == 1 and all(r is results[0] for r in results)
    assert projections.get(owner, "text", features.clone(), project) is not results[0] and len(calls) == 2  # another tensor
    assert projections.get(object(), "text", features, project) is not results[0] and len(calls) == 3  # another model


def test_bfloat16_linear_maps_give_float32s_answers_to_a_hundredth():
    """StackedEnsemble.set_precision("bfloat16"): the layers' linear maps run on bfloat16
    weights (the router's default where the CPU multiplies bfloat16 natively); outputs stay
    float32, within 0.01 of float32's, padding included; an unknown precision is refused."""
    model = _ensemble().stacked()
    batch = [evidence(["text"], 9), evidence(["text", "image", "image_text", "audio", "audio_text"], 10)]
    with torch.inference_mode():
        inputs = model.embed(batch)
        exact = model.set_precision("float32")(inputs, attention=False)
        rounded = model.set_precision("bfloat16")(inputs, attention=False)
    assert model.products[0]["qkv"][0].dtype == torch.bfloat16 and model.layers[0]["qkv"][0].dtype == torch.float32
    assert rounded.probabilities.dtype == torch.float32 and not torch.equal(rounded.probabilities, exact.probabilities)
    for name in ("probabilities", "gate_weights"):
        torch.testing.assert_close(getattr(rounded, name), getattr(exact, name), atol=0.01, rtol=0, msg=name)
    with pytest.raises(ValueError, match="'float16' is not one of float32, bfloat16"):
        model.set_precision("float16")


def test_auto_precision_is_bfloat16_only_where_it_keeps_float32s_answers(monkeypatch, caplog):
    """fusion_precision "auto": bfloat16 where the CPU multiplies it natively and a check
    on made-up inputs finds float32's probabilities (checked_precision), float32 with a
    warning where rounding would move them (here: a classifier scaled up 1000x)."""
    from modalmesh.router import fusion

    monkeypatch.setattr(fusion, "native_bfloat16", lambda: True)  # the check runs whatever this CPU is
    model = _ensemble().stacked()
    assert fusion.checked_precision(model, "auto") == "bfloat16" and model.precision == "float32"  # checking changes nothing
    assert fusion.checked_precision(model, "float32") == "float32"
    weight, bias = model.classifier
    model.classifier = (weight * 1000, bias)
    with caplog.at_level("WARNING", logger="modalmesh.router.fusion"):
        assert fusion.checked_precision(model, "auto", "the test model") == "float32"
    assert "the test model: bfloat16 moved a probability" in caplog.text
    assert fusion.checked_precision(model, "bfloat16") == "bfloat16"  # asked for by name: as asked
    monkeypatch.setattr(fusion, "native_bfloat16", lambda: False)
    assert fusion.fusion_precision("auto") == "float32"
    with pytest.raises(ValueError, match="'half' is not auto or one of float32, bfloat16"):
        fusion.fusion_precision("half")
