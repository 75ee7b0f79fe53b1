"""TLS, mutual TLS and bearer tokens: the right callers get in, the wrong ones do not."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modalmesh.common.client import EncoderClient, connect
from modalmesh.common.security import make_dev_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    make_dev_certificates(folder)
    # A second, unrelated CA: its certificates must not be trusted.
    make_dev_certificates(folder / "other")
    return folder


def test_dev_certificates_are_written(certs):
    for name in ("ca", "router", "text", "vision", "audio", "client"):
        assert (certs / f"{name}.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert (certs / f"{name}-key.pem").stat().st_mode & 0o077 == 0  # keys are private


def test_tls_accepts_a_client_that_trusts_the_ca(start_text_service, certs):
    handle = start_text_service(tls_cert=str(certs / "text.pem"), tls_key=str(certs / "text-key.pem"))
    with connect(handle.address, ca=str(certs / "ca.pem"), server_name="text") as channel:
        assert EncoderClient(channel).encode_text("over tls").pooled.shape == (32,)


def test_tls_refuses_plaintext_and_untrusted_clients(start_text_service, certs):
    handle = start_text_service(tls_cert=str(certs / "text.pem"), tls_key=str(certs / "text-key.pem"))
    for channel in (
        connect(handle.address),  # plaintext to a TLS port
        connect(handle.address, ca=str(certs / "other" / "ca.pem"), server_name="text"),  # wrong CA
    ):
        with channel, pytest.raises(grpc.RpcError) as raised:
            EncoderClient(channel).encode_text("should fail", timeout=3)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_from_the_ca(start_text_service, certs):
    handle = start_text_service(tls_cert=str(certs / "text.pem"), tls_key=str(certs / "text-key.pem"), tls_client_ca=str(certs / "ca.pem"))
    good = connect(handle.address, ca=str(certs / "ca.pem"), cert=str(certs / "client.pem"), key=str(certs / "client-key.pem"), server_name="text")
    with good:
        assert EncoderClient(good).encode_text("mutual").pooled.shape == (32,)
    no_cert = connect(handle.address, ca=str(certs / "ca.pem"), server_name="text")
    foreign = connect(
        handle.address,
        ca=str(certs / "ca.pem"),
        cert=str(certs / "other" / "client.pem"),
        key=str(certs / "other" / "client-key.pem"),
        server_name="text",
    )
    for channel in (no_cert, foreign):
        with channel, pytest.raises(grpc.RpcError) as raised:
            EncoderClient(channel).encode_text("should fail", timeout=3)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_token_is_required_except_for_health(start_text_service):
    handle = start_text_service(auth_token="correct-horse")
    with connect(handle.address, token="correct-horse") as channel:
        assert EncoderClient(channel).encode_text("with token").pooled.shape == (32,)
        assert EncoderClient(channel).info().modality == "text"
    for token in ("", "wrong"):
        with connect(handle.address, token=token) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                EncoderClient(channel).encode_text("no entry")
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in raised.value.details()
            # Kubernetes probes carry no token: health stays open.
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
