"""The wire format, driven directly: bytes in, requests and replies out, or BadRequest/BadReply."""

import pytest

from holdingpen.pen.protocol import (BAD_REQUEST, BORROW, MAX_LINE_BYTES, POOL_EMPTY, STATUS, TOO_LONG,
                                 BadReply, BadRequest, LineReader, ProtocolError, Request,
                                 borrow_reply, decode_reply, decode_request, encode_reply,
                                 encode_request, error_reply, request_reader, status_reply)

ENCODED = [
    (Request(STATUS), b'{"action":"status"}\n'),
    (Request(BORROW, "memory"), b'{"action":"borrow","kind":"memory"}\n'),
    (Request(BORROW, "disk:/var/tmp", True), b'{"action":"borrow","kind":"disk:/var/tmp","fd":true}\n'),
    (Request(BORROW, "disk", False), b'{"action":"borrow","kind":"disk"}\n'),
    (Request(BORROW, "disk:/srv/données"), b'{"action":"borrow","kind":"disk:/srv/donn\\u00e9es"}\n'),
]


@pytest.mark.parametrize("request_, line", ENCODED, ids=[repr(e[0]) for e in ENCODED])
def test_requests_encode_to_one_line_and_back(request_, line):
    assert encode_request(request_) == line
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert decode_request(line[:-1]) == request_


DECODED = [
    (b'{"action":"status"}', Request(STATUS)),
    (b'{"action":"borrow"}', Request(BORROW, "memory", False)),           # memory by default
    (b'{"action":"borrow","fd":false}', Request(BORROW, "memory", False)),
    (b'{"action":"borrow","kind":"disk","fd":true}', Request(BORROW, "disk", True)),
    (b'{"fd":true,"kind":"disk:/var/tmp","action":"borrow"}', Request(BORROW, "disk:/var/tmp", True)),
    (b'  { "action" : "status" }  ', Request(STATUS)),
    (b'{"action":"status"}\r', Request(STATUS)),            # a client that ends lines with CRLF
    (b'{"action":"status"}' + b" " * (MAX_LINE_BYTES - 19), Request(STATUS)),   # exactly the most
]


@pytest.mark.parametrize("line, request_", DECODED)
def test_decode_request(line, request_):
    assert decode_request(line) == request_


def nested(depth):
    """A valid request with a field nested depth arrays deep, under MAX_LINE_BYTES."""
    return b'{"action":"status","x":' + b"[" * depth + b"]" * depth + b"}"


HOSTILE = [
    ("empty", b"", BAD_REQUEST),
    ("not JSON", b"hello", BAD_REQUEST),
    ("half an object", b'{"action":"status"', BAD_REQUEST),
    ("a JSON list", b'["borrow"]', BAD_REQUEST),
    ("an empty list", b"[]", BAD_REQUEST),
    ("a JSON number", b"1", BAD_REQUEST),
    ("a JSON string", b'"status"', BAD_REQUEST),
    ("null", b"null", BAD_REQUEST),
    ("true", b"true", BAD_REQUEST),
    ("missing action", b"{}", BAD_REQUEST),
    ("missing action, with a kind", b'{"kind":"memory"}', BAD_REQUEST),
    ("action null", b'{"action":null}', BAD_REQUEST),
    ("unknown action", b'{"action":"steal"}', BAD_REQUEST),
    ("action in capitals", b'{"action":"STATUS"}', BAD_REQUEST),
    ("action a list", b'{"action":["borrow"]}', BAD_REQUEST),
    ("action an object", b'{"action":{"borrow":true}}', BAD_REQUEST),
    ("unknown field on status", b'{"action":"status","kind":"memory"}', BAD_REQUEST),
    ("unknown field on borrow", b'{"action":"borrow","user":"root"}', BAD_REQUEST),
    ("unknown field with a newline", b'{"action":"status","a\\nb":1}', BAD_REQUEST),
    ("a uid of one's choosing", b'{"action":"borrow","uid":0}', BAD_REQUEST),
    ("kind a number", b'{"action":"borrow","kind":5}', BAD_REQUEST),
    ("kind null", b'{"action":"borrow","kind":null}', BAD_REQUEST),
    ("kind a list", b'{"action":"borrow","kind":["memory"]}', BAD_REQUEST),
    ("kind empty", b'{"action":"borrow","kind":""}', BAD_REQUEST),
    ("kind with a NUL", b'{"action":"borrow","kind":"mem\\u0000ory"}', BAD_REQUEST),
    ("fd 1", b'{"action":"borrow","fd":1}', BAD_REQUEST),
    ("fd 0", b'{"action":"borrow","fd":0}', BAD_REQUEST),
    ("fd yes", b'{"action":"borrow","fd":"yes"}', BAD_REQUEST),
    ("fd null", b'{"action":"borrow","fd":null}', BAD_REQUEST),
    ("fd huge", b'{"action":"borrow","fd":1e999}', BAD_REQUEST),
    ("fd NaN", b'{"action":"borrow","fd":NaN}', BAD_REQUEST),
    ("fd of 4000 digits", b'{"action":"borrow","fd":' + b"9" * 4000 + b"}", BAD_REQUEST),
    ("invalid UTF-8", b'{"action":"status"}\xff', BAD_REQUEST),
    ("invalid UTF-8 in a string", b'{"action":"borrow","kind":"\xc3("}', BAD_REQUEST),
    ("UTF-16", '{"action":"status"}'.encode("utf-16"), BAD_REQUEST),
    ("a byte order mark", b'\xef\xbb\xbf{"action":"status"}', BAD_REQUEST),
    ("two requests", b'{"action":"status"}\n{"action":"status"}', BAD_REQUEST),
    ("trailing words", b'{"action":"status"} please', BAD_REQUEST),
    ("a NUL after", b'{"action":"status"}\x00', BAD_REQUEST),
    ("nested 1,000 deep", nested(1000), BAD_REQUEST),
    ("nested 2,000 deep", nested(2000), BAD_REQUEST),
    ("only brackets", b"[" * MAX_LINE_BYTES, BAD_REQUEST),
    ("only braces", b'{"a":' * (MAX_LINE_BYTES // 5), BAD_REQUEST),
    ("one byte over", b'{"action":"status"}' + b" " * (MAX_LINE_BYTES - 18), TOO_LONG),
    ("far over", b"x" * (1 << 20), TOO_LONG),
    ("deep and over", b"[" * (MAX_LINE_BYTES + 1), TOO_LONG),
]


@pytest.mark.parametrize("why, line, code", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_decode_request_refuses(why, line, code):
    # pytest.raises(ProtocolError) lets anything else (RecursionError, TypeError ...) fail the test.
    with pytest.raises(ProtocolError) as e:
        decode_request(line)
    assert e.value.code == code
    assert e.value.message and e.value.message.isprintable()   # it goes back in a reply
    assert str(e.value) == e.value.message


def test_deep_nesting_is_within_the_line_limit():
    # So the nesting cases above test the JSON decoder, not the length check.
    assert len(nested(2000)) <= MAX_LINE_BYTES


REPLIES = [
    {"ok": True, "action": "borrow", "kind": "memory", "size": 2147483648, "fd": False},
    {"ok": True, "action": "status", "pools": [{"name": "disk:/srv/données", "held": 1}], "loans": []},
    {"ok": False, "error": "pool-empty", "message": "all 2 memory reservations are lent"},
]


@pytest.mark.parametrize("fields", REPLIES)
def test_replies_encode_to_one_line_and_back(fields):
    line = encode_reply(fields)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert decode_reply(line.rstrip(b"\n")) == fields


def test_error_reply():
    line = error_reply(POOL_EMPTY, "all 2 memory reservations are lent\nreally")
    assert line == (b'{"ok":false,"error":"pool-empty",'
                    b'"message":"all 2 memory reservations are lent\\nreally"}\n')
    assert decode_reply(line[:-1]) == {"ok": False, "error": "pool-empty",
                                       "message": "all 2 memory reservations are lent\nreally"}


BAD_REPLIES = [
    ("empty", b""),
    ("not JSON", b"HTTP/1.1 400 Bad Request"),
    ("a list", b'[{"ok":true}]'),
    ("a string", b'"ok"'),
    ("no ok", b'{"action":"borrow"}'),
    ("ok 1", b'{"ok":1}'),
    ("ok a string", b'{"ok":"true"}'),
    ("ok null", b'{"ok":null}'),
    ("invalid UTF-8", b'{"ok":true,"message":"\xff"}'),
    ("5000 digits", b'{"ok":true,"size":' + b"9" * 5000 + b"}"),      # past Python's int limit
    ("nested 100,000 deep", b'{"ok":true,"x":' + b"[" * 100000 + b"]" * 100000 + b"}"),
]


@pytest.mark.parametrize("why, line", BAD_REPLIES, ids=[b[0] for b in BAD_REPLIES])
def test_decode_reply_refuses(why, line):
    # A bad reply is the daemon's fault, not the client's: its own class, and no code to send.
    with pytest.raises(BadReply) as e:
        decode_reply(line)
    assert not isinstance(e.value, BadRequest) and e.value.code is None
    assert "reply" in e.value.message


def test_a_bad_request_is_not_a_bad_reply():
    with pytest.raises(BadRequest) as e:
        decode_request(b"hello")
    assert not isinstance(e.value, BadReply) and e.value.code == BAD_REQUEST


def test_replies_are_built_in_their_shapes():
    assert decode_reply(borrow_reply("disk:/var/tmp", 4096, True)[:-1]) == {
        "ok": True, "action": "borrow", "kind": "disk:/var/tmp", "size": 4096, "fd": True}
    assert decode_reply(status_reply(False, [], [])[:-1]) == {
        "ok": True, "action": "status", "ready": False, "pools": [], "loans": [],
        "config_error": None}
    assert decode_reply(status_reply(True, [], [], "f.toml: x: unknown key")[:-1])[
        "config_error"] == "f.toml: x: unknown key"


# ---- the line reader: (bytes fed one after another, lines it gives, then what it raises) ----

READS = [
    ("one line", [b"ab\n"], [b"ab"], None),
    ("in pieces", [b"a", b"b", b"\n"], [b"ab"], None),
    ("not yet", [b"ab"], [], None),
    ("two at once", [b"a\nb\n"], [b"a", b"b"], None),
    ("one and a half", [b"a\nb"], [b"a"], None),
    ("empty line", [b"\n"], [b""], None),
    ("exactly the most", [b"x" * 8 + b"\n"], [b"x" * 8], None),
    ("one too many, no newline", [b"x" * 9], [], TOO_LONG),
    ("one too many, with newline", [b"x" * 9 + b"\n"], [], TOO_LONG),
    ("a good line, then too long", [b"a\n" + b"x" * 9], [b"a"], TOO_LONG),
]


@pytest.mark.parametrize("feeds, lines, raises", [r[1:] for r in READS], ids=[r[0] for r in READS])
def test_line_reader(feeds, lines, raises):
    reader = LineReader(8, lambda: BadRequest(TOO_LONG, "too long"))
    got = []
    try:
        for data in feeds:
            reader.feed(data)
            while (line := reader.next_line()) is not None:
                got.append(line)
    except BadRequest as e:
        assert e.code == raises
    else:
        assert raises is None
    assert got == lines


def test_request_reader_refuses_past_max_line_bytes():
    reader = request_reader()
    reader.feed(b"x" * (MAX_LINE_BYTES + 1))
    with pytest.raises(BadRequest) as e:
        reader.next_line()
    assert e.value.code == TOO_LONG
