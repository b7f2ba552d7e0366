"""common.jsonline writes and reads JSON exactly as the json module does.

It exists for start-up time only (protocol.py uses it, and gatekeeper imports
protocol before every CMD): these tests keep it the same text and values.
"""

import json

import pytest
from hypothesis import given, settings, strategies as st

from holdingpen.common import jsonline
from holdingpen.pen import protocol

KINDS = ["memory", "disk", "disk:/var/tmp", "disk:/srv/\u00e9", 'a"b\\c', "\u2603", "x\ty", "\U0001f600"]


@pytest.mark.parametrize("kind", KINDS)
def test_requests_are_what_json_writes(kind):
    for want_fd in (False, True):
        fields = {"action": "borrow", "kind": kind, **({"fd": True} if want_fd else {})}
        assert protocol.encode_request(protocol.Request(protocol.BORROW, kind, want_fd)) == \
            json.dumps(fields, separators=(",", ":")).encode() + b"\n"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300)
@given(JSON)
def test_jsonline_writes_and_reads_as_json_does(value):
    text = json.dumps(value, separators=(",", ":"))
    assert jsonline.dumps(value) == text
    assert jsonline.loads(text) == json.loads(text)
    assert jsonline.loads(f" {text}\n") == value or value != value


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_jsonline_refuses_what_json_refuses(text):
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        with pytest.raises((ValueError, RecursionError)):
            jsonline.loads(text)
    else:
        got = jsonline.loads(text)
        assert got == expected or (got != got and expected != expected)   # NaN


def test_jsonline_refuses_what_it_cannot_write():
    with pytest.raises(TypeError):
        jsonline.dumps({"fd": object()})
