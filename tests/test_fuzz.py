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
