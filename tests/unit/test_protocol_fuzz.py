"""decode_request under generated input: a Request or a ProtocolError with a known code, never else.

Hypothesis draws request-shaped objects (right and wrong types, extra and
missing fields, NULs), encodes them as JSON in several ways, then mutates the
bytes: cut short, NULs and invalid UTF-8 put in, bytes changed, deep nesting,
padding to just under, at and over the line limit. Raw bytes and huge lines
come on their own. The runs are derandomized (the same examples every time,
no example database), so a failure in CI is a failure on every machine.

Whatever decode_request returns must also be what the line says: a JSON
object with exactly those fields. Whatever it refuses must come back as an
error reply that is one line of valid JSON.
"""

import collections
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from holdingpen.pen.protocol import (BAD_REQUEST, BORROW, MAX_LINE_BYTES, STATUS, TOO_LONG,
                                 ProtocolError, Request, decode_reply, decode_request,
                                 encode_request, error_reply)

# Each example is checked with some forty lines made from it (family() below): about
# 100,000 lines in 12 s on a 2-core VM. The live socket (tests/integration/test_fuzz.py)
# takes 30,000 more.
STRUCTURED_EXAMPLES = 1_500
RAW_EXAMPLES = 1_000

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

outcomes = collections.Counter()      # lines checked, by outcome
examples = collections.Counter()      # hypothesis examples, by test


def check(line):
    """Decode line and hold the result to the protocol; the outcome's name."""
    try:
        request = decode_request(line)
    except ProtocolError as e:
        assert e.code in (BAD_REQUEST, TOO_LONG), e.code
        assert (e.code == TOO_LONG) == (len(line) > MAX_LINE_BYTES)
        assert isinstance(e.message, str) and e.message and e.message.isprintable()
        reply = error_reply(e.code, e.message)
        assert reply.endswith(b"\n") and reply.count(b"\n") == 1
        assert decode_reply(reply[:-1]) == {"ok": False, "error": e.code, "message": e.message}
        return e.code
    # Anything else raised (TypeError, RecursionError, ...) fails the test as it is.
    assert isinstance(request, Request)
    assert len(line) <= MAX_LINE_BYTES
    fields = json.loads(line.decode("utf-8"))        # it was one JSON object ...
    assert isinstance(fields, dict) and fields["action"] == request.action
    if request.action == STATUS:
        assert set(fields) == {"action"} and (request.kind, request.fd) == (None, False)
    else:
        assert request.action == BORROW                # ... of exactly these fields
        assert set(fields) <= {"action", "kind", "fd"}
        assert request.kind == fields.get("kind", "memory")
        assert isinstance(request.kind, str) and request.kind and "\0" not in request.kind
        assert request.fd is fields.get("fd", False) and isinstance(request.fd, bool)
    assert decode_request(encode_request(request)[:-1]) == request
    return f"request {request.action}"


# ---- what is drawn ----

json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10**30, 10**30)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=5)

actions = (st.sampled_from([STATUS, BORROW]) | st.sampled_from(
    ["Status", "BORROW", "borrow ", " status", "borrow\0", "stat\0us", "", "lend", "steal"])
    | json_values)
kinds = (st.sampled_from(["memory", "disk", "disk:/var/tmp", "disk:/var/tmp/../tmp", "gpu", "",
                          "memory\0", "disk:/\0etc", "\ud800", "disk:\udcff", "m" * 3000])
         | st.text(max_size=20) | json_values)
fds = st.sampled_from([True, False, 0, 1, "true", None, [], {}, 1.0]) | json_values
names = (st.sampled_from(["action", "kind", "fd", "uid", "pid", "user", "Action", "kind\0", "",
                          "fd ", "\ud800"]) | st.text(max_size=8))

# Nearly right: the right action, and a kind or an fd that may be wrong.
near_valid = st.fixed_dictionaries(
    {"action": st.sampled_from([STATUS, BORROW, BORROW])},
    optional={"kind": st.sampled_from(["memory", "disk", "disk:/var/tmp", "gpu", "", "\0",
                                       "memory\0", "disk:/\0", "\ud800", "disk:\udcff"])
              | st.text(max_size=10) | json_scalars,
              "fd": st.booleans() | st.sampled_from([0, 1, None, "true", 1.0, []])})

requests = (
    st.fixed_dictionaries({"action": actions}, optional={"kind": kinds, "fd": fds})
    | st.fixed_dictionaries({"action": st.sampled_from([STATUS, BORROW])},
                            optional={"kind": kinds, "fd": fds, "uid": json_values})
    | st.dictionaries(names, json_values, max_size=5)
    | json_values)

INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xc0\x80", b"\xc3(", b"\xed\xa0\x80",
                b"\xe2\x82", b"\xf0\x9f\x98", b"\xf8\x88\x80\x80\x80", b"\xef\xbb\xbf"]


@st.composite
def encoded(draw, objects=requests):
    """A drawn request as a JSON line, as some client might write it."""
    obj = draw(objects)
    compact = draw(st.booleans())
    ensure_ascii = draw(st.booleans())
    text = json.dumps(obj, ensure_ascii=ensure_ascii, allow_nan=True,
                      separators=(",", ":") if compact else (", ", ": "))
    # A lone surrogate, written raw: bytes that are not UTF-8 at all.
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated(draw):
    """An encoded request, then up to four changes to its bytes."""
    line = bytearray(draw(encoded()))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(line)))
        how = draw(st.sampled_from(["cut", "nul", "utf8", "byte", "repeat", "pad", "nest", "nl"]))
        if how == "cut":                      # a partial line
            del line[at:]
        elif how == "nul":
            line[at:at] = b"\0" * draw(st.integers(1, 3))
        elif how == "utf8":
            line[at:at] = draw(st.sampled_from(INVALID_UTF8))
        elif how == "byte" and line:
            line[min(at, len(line) - 1)] = draw(st.integers(0, 255))
        elif how == "repeat":
            line[at:at] = line[:at][-draw(st.integers(1, 64)):]
        elif how == "pad":                    # to just under, at or over the limit
            target = MAX_LINE_BYTES + draw(st.integers(-2, 2))
            line[at:at] = draw(st.sampled_from([b" ", b"\t", b"\r", b"x", b"\0"])) * max(
                0, target - len(line))
        elif how == "nest":
            depth = draw(st.integers(1, 3000))
            line[at:at] = draw(st.sampled_from([b"[", b'{"a":', b'{"action":'])) * depth
        elif how == "nl":
            line[at:at] = b"\n"
    return bytes(line)


@st.composite
def huge(draw):
    """Lines from just over the limit to a megabyte, of one repeated piece."""
    piece = draw(st.sampled_from([b"x", b"[", b" ", b"\0", b"\xff", b'{"action":"status"}']))
    return piece * (draw(st.integers(MAX_LINE_BYTES + 1, 1 << 20)) // len(piece) + 1)


raw = st.binary(max_size=64) | huge()


def family(line):
    """line and what a careless or hostile client makes of it, derived without drawing.

    Drawing each byte through hypothesis costs milliseconds an example; these
    cost microseconds, so each example checks some forty lines.
    """
    n = len(line)
    spots = sorted({0, n // 3, n // 2, (2 * n) // 3, max(0, n - 1), n})
    yield line
    for cut in spots[1:-1]:
        yield line[:cut]                                    # partial lines
    for at in spots:
        yield line[:at] + b"\0" + line[at:]                # an embedded NUL
        yield line[:at] + b"\n" + line[at:]                # two lines in one
    for i, bad in enumerate(INVALID_UTF8):
        at = spots[i % len(spots)]
        yield line[:at] + bad + line[at:]                   # invalid UTF-8
    for at in spots[:-1]:
        yield line[:at] + bytes([line[at] ^ 0x80]) + line[at + 1:]   # one bit flipped
    for target in (MAX_LINE_BYTES - 1, MAX_LINE_BYTES, MAX_LINE_BYTES + 1):
        yield line + b" " * max(0, target - n)              # just under, at, just over
        yield b"\t" * max(0, target - n) + line
    yield b"[" * 1000 + line + b"]" * 1000                  # deep, within the limit
    yield b'{"action":' * 800 + line + b"}" * 800
    yield line + b" please"
    yield line * 2


# ---- the tests ----

@settings(FUZZ, max_examples=STRUCTURED_EXAMPLES)
@given(line=st.one_of(encoded(near_valid), encoded(near_valid), encoded(), mutated()))
def test_structured_requests_decode_or_are_refused(line):
    examples["structured"] += 1
    for each in family(line):
        outcomes[check(each)] += 1


@settings(FUZZ, max_examples=RAW_EXAMPLES)
@given(line=raw)
def test_raw_bytes_decode_or_are_refused(line):
    examples["raw"] += 1
    for each in family(line):
        outcomes[check(each)] += 1


def test_fuzz_figures(figure):
    """The tally of the two runs above (pytest runs this module's tests in order);
    run alone (-k figures), it runs them first, so that it always checks something."""
    if not examples["structured"]:
        test_structured_requests_decode_or_are_refused()
    if not examples["raw"]:
        test_raw_bytes_decode_or_are_refused()
    total = sum(outcomes.values())
    assert outcomes[f"request {BORROW}"] and outcomes[f"request {STATUS}"] and \
        outcomes[BAD_REQUEST] and outcomes[TOO_LONG], outcomes   # every outcome was reached
    figure(f"{sum(examples.values()):,} hypothesis examples ({examples['structured']:,} "
           f"request-shaped, {examples['raw']:,} raw), {total:,} lines decoded: " + ", ".join(
        f"{n:,} {what}" for what, n in sorted(outcomes.items())) + "; nothing else raised")
