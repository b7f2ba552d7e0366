"""The daemon's protocol: one line of JSON each way, bytes in, values out.

A client sends one request line and reads one reply line:

    {"action": "borrow", "kind": "memory"}                 keep the connection open:
    {"action": "borrow", "kind": "disk:/var/tmp", "fd": true}   the loan lasts as long
    {"action": "status"}                                    as it does

    {"ok": true, "action": "borrow", "kind": "memory", "size": 2147483648, "fd": false}
    {"ok": false, "error": "pool-empty", "message": "all 2 memory reservations are lent"}

With "fd": true the reply to a borrow carries the reservation itself as a
descriptor (SCM_RIGHTS). "kind" is "memory", "disk" (the first disk pool) or
"disk:PATH". Nothing in a request says who the client is: the daemon asks the
kernel (SO_PEERCRED).
"""

import json

MAX_LINE_BYTES = 4096          # a request is tiny; anything longer is refused, not buffered
BORROW = "borrow"
STATUS = "status"

# Error codes: what a client can act on (README.md lists them).
BAD_REQUEST = "bad-request"        # not one line of JSON of the shape above
TOO_LONG = "too-long"              # over MAX_LINE_BYTES without a newline
UNKNOWN_KIND = "unknown-kind"      # no pool of that kind
POOL_EMPTY = "pool-empty"          # none held just now (all lent, or still reserving)
NOT_AUTHORIZED = "not-authorized"  # the authorize step said no
ALREADY_BORROWING = "already-borrowing"  # one borrow per connection
TIMEOUT = "timeout"                # said nothing in time
BUSY = "busy"                      # too many connections in all
LIMITED = "limited"                # over this user's limit (connections, borrows a second)


class ProtocolError(Exception):
    """A request or reply that breaks the protocol: code and message for the reply."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class Request:
    __slots__ = ("action", "kind", "fd")

    def __init__(self, action, kind=None, fd=False):
        self.action, self.kind, self.fd = action, kind, fd

    def __eq__(self, other):
        return isinstance(other, Request) and (self.action, self.kind, self.fd) == \
            (other.action, other.kind, other.fd)

    def __repr__(self):
        return f"Request({self.action!r}, kind={self.kind!r}, fd={self.fd!r})"


def encode_request(request):
    fields = {"action": request.action}
    if request.action == BORROW:
        fields["kind"] = request.kind
        if request.fd:
            fields["fd"] = True
    return _line(fields)


def decode_request(line):
    """A Request from one line (bytes, without its newline).

    Raises:
        ProtocolError: anything but a well-formed request.
    """
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(TOO_LONG, f"a request is one line of at most {MAX_LINE_BYTES} bytes")
    try:
        fields = json.loads(line.decode("utf-8"))
    # RecursionError: "[" * 1000 fits in a line and exhausts the decoder's stack.
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(BAD_REQUEST, "a request is one line of JSON") from None
    if not isinstance(fields, dict):
        raise ProtocolError(BAD_REQUEST, "a request is a JSON object")
    action = fields.get("action")
    if action == STATUS:
        _only(fields, {"action"})
        return Request(STATUS)
    if action == BORROW:
        _only(fields, {"action", "kind", "fd"})
        kind, fd = fields.get("kind", "memory"), fields.get("fd", False)
        if not isinstance(kind, str) or not kind or "\0" in kind:
            raise ProtocolError(BAD_REQUEST, '"kind" is "memory", "disk" or "disk:PATH"')
        if not isinstance(fd, bool):
            raise ProtocolError(BAD_REQUEST, '"fd" is true or false')
        return Request(BORROW, kind, fd)
    raise ProtocolError(BAD_REQUEST, '"action" is "borrow" or "status"')


def _only(fields, allowed):
    extra = sorted(set(fields) - allowed)
    if extra:
        raise ProtocolError(BAD_REQUEST, f"unknown field {extra[0]!r}")


def encode_reply(fields):
    return _line(fields)


def error_reply(code, message):
    return _line({"ok": False, "error": code, "message": message})


def decode_reply(line):
    """The reply's fields (a dict with "ok").

    Raises:
        ProtocolError: not a reply from a holdingpen daemon.
    """
    try:
        fields = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):    # as in decode_request
        raise ProtocolError(BAD_REQUEST, "the daemon's reply is not JSON") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("ok"), bool):
        raise ProtocolError(BAD_REQUEST, "the daemon's reply has no \"ok\"")
    return fields


def _line(fields):
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"
