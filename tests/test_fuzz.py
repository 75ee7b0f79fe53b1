"""The fuzz campaign (tests/fuzz.py) in the suite: 1,200 seeded hostile inputs across every
input family against the real mesh on 127.0.0.1."""

from tests import fuzz


def test_a_fuzz_campaign_gets_only_the_callers_codes_in_the_callers_words(mesh):
    addresses = {"router": mesh.router.address, **{name: handle.address for name, handle in mesh.encoders.items()}}
    cases = fuzz.generate(1200, seed=1)
    assert {case.family for case in cases} == set(fuzz.FAMILIES) and len(cases) == 1200
    outcomes = fuzz.run(cases, addresses)
    result = fuzz.summary(outcomes)
    assert result["problems"] == []  # no INTERNAL or UNKNOWN, no message over 1 KiB or naming internals
    assert result["codes"].get("OK", 0) > 100 and result["codes"].get("INVALID_ARGUMENT", 0) > 500  # both paths exercised
    assert set(fuzz.serving(addresses).values()) == {"SERVING"}


def test_a_fuzz_campaign_over_http_gets_the_callers_statuses_in_the_documented_body(mesh):
    """300 seeded hostile HTTP calls (router/http.py): bodies nested deep, truncated or of
    the wrong types, uploads with odd form fields, odd timeouts and binary-extension
    headers: each answered 200 or a caller's status with the error body, never a 5xx."""
    from modalmesh.up import free_port

    port = free_port()
    gateway = mesh.start_router(http_port=port)
    try:
        result = fuzz.http_summary(fuzz.run_http(fuzz.generate_http(300, seed=1), port))
    finally:
        gateway.stop(grace=0.5)
    assert result["problems"] == []
    assert result["statuses"].get("200", 0) > 10 and result["statuses"].get("400", 0) > 150  # both paths exercised
    assert set(fuzz.serving({"router": mesh.router.address, **{n: h.address for n, h in mesh.encoders.items()}}).values()) == {"SERVING"}
