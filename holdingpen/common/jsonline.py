"""JSON values to one line and back, on the C core of the json module.

`import json` costs about 3 ms at start (its pure-Python half compiles
regular expressions: re, enum, functools), most of gatekeeper's budget; the
C core _json, which json itself uses for the work, costs 0.1 ms. The same
text as json.dumps(value, separators=(",", ":")), and the same values as
json.loads.
"""

import _json

_WHITESPACE = " \t\n\r"


class _Decoding:
    """What _json's scanner reads from a json.JSONDecoder: the defaults of json.loads."""
    strict = True                  # control characters inside strings are refused
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float         # NaN, Infinity, -Infinity, as json.loads takes them


def _unserializable(value):
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_scan = _json.make_scanner(_Decoding())
_encode = _json.make_encoder({}, _unserializable, _json.encode_basestring_ascii, None,
                             ":", ",", False, False, True)


def dumps(value):
    """value as compact JSON text, ASCII only (as json.dumps(value, separators=(",", ":"))).

    Raises:
        TypeError: a value JSON cannot hold.
        ValueError: a circular reference.
    """
    return "".join(_encode(value, 0))


def loads(text):
    """The value of one JSON text (str), surrounding whitespace allowed.

    Raises:
        ValueError: not one JSON value (json.JSONDecodeError where json would say where).
        RecursionError: nested too deeply.
    """
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        raise ValueError("expecting a JSON value") from None
    if end != len(text.rstrip(_WHITESPACE)):
        raise ValueError("extra data after the JSON value")
    return value
