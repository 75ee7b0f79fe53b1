"""Configuration: defaults per service, environment, per-service environment, flags."""

import argparse

import pytest

from modalmesh.common.config import ServiceConfig, add_config_flags, load_config


def test_default_ports_per_service():
    ports = {name: load_config(name, environ={}).port for name in ("router", "text", "vision", "audio")}
    assert ports == {"router": 50050, "text": 50051, "vision": 50052, "audio": 50053}
    assert load_config("text", environ={}).metrics_port == 9051


def test_the_router_runs_torch_on_one_thread_unless_told():
    assert load_config("router", environ={}).torch_threads == 1
    assert load_config("text", environ={}).torch_threads == 0  # every core
    assert load_config("router", environ={"MODALMESH_ROUTER_TORCH_THREADS": "2"}).torch_threads == 2


def test_precedence_default_env_service_env_flag():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    env = {"MODALMESH_MAX_BATCH_SIZE": "8", "MODALMESH_TEXT_MAX_BATCH_SIZE": "4", "MODALMESH_VISION_PORT": "6000"}
    assert load_config("text", parser.parse_args([]), environ=env).max_batch_size == 4
    assert load_config("vision", parser.parse_args([]), environ=env).max_batch_size == 8
    assert load_config("vision", parser.parse_args([]), environ=env).port == 6000
    assert load_config("text", parser.parse_args(["--max-batch-size", "2"]), environ=env).max_batch_size == 2


def test_booleans_and_bad_values_from_the_environment():
    assert load_config("text", environ={"MODALMESH_ALLOW_DOWNLOAD": "yes"}).allow_download is True
    with pytest.raises(ValueError, match="MODALMESH_PORT: expected int, got 'abc'"):
        load_config("text", environ={"MODALMESH_PORT": "abc"})
    with pytest.raises(ValueError, match="expected a boolean"):
        load_config("text", environ={"MODALMESH_ALLOW_DOWNLOAD": "maybe"})


@pytest.mark.parametrize(
    "changes, complaint",
    [
        ({"trace_exporter": "jaeger"}, "trace_exporter must be"),
        ({"tls_cert": "a.pem"}, "tls_cert and tls_key must be given together"),
        ({"tls_client_ca": "ca.pem"}, "needs tls_cert"),
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"ocr_det_side": 10}, "ocr_det_side must be 0"),
        ({"openvino_shapes": -1}, "openvino_shapes must be 0 or more"),
        ({"ocr_engine": "tensorrt"}, "ocr_engine must be one of onnxruntime, openvino"),
        ({"ocr_quick_alphabet": "greek"}, "ocr_quick_alphabet must be one of latin, all"),
        ({"engine": "tensorrt"}, "engine must be one of openvino, torch"),
        ({"fusion_precision": "float16"}, "fusion_precision must be one of auto, float32, bfloat16"),
    ],
)
def test_invalid_configuration_is_refused(changes, complaint):
    with pytest.raises(ValueError, match=complaint):
        ServiceConfig(**changes)


def test_secrets_are_masked_in_the_startup_log():
    shown = ServiceConfig(auth_token="s3cret", tls_cert="c.pem", tls_key="k.pem").describe()
    assert shown["auth_token"] == "***" and shown["tls_key"] == "***"
    assert shown["tls_cert"] == "c.pem"
