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

No I/O here: LineReader takes bytes as they arrive and gives back whole
lines. A request that breaks the protocol raises BadRequest (the client's
fault: the daemon answers it with the error's code); a reply that does raises
BadReply (the daemon's fault, or not a daemon at all: the client gives up).
The replies are built here and nowhere else (borrow_reply, status_reply,
error_reply). JSON goes through common.jsonline, the json module's C core:
gatekeeper imports this module before every CMD, and `import json` costs 3 ms.
"""

from holdingpen.common import jsonline

MAX_LINE_BYTES = 4096          # a request is tiny; anything longer is refused, not buffered
MAX_REPLY_BYTES = 64 << 20     # a status reply lists every loan: 1,024 pools' worth fits
BORROW = "borrow"
STATUS = "status"

# Error codes: what a client can act on (README.md lists them).
BAD_REQUEST = "bad-request"        # not one line of JSON of the shape above
TOO_LONG = "too-long"              # over MAX_LINE_BYTES without a newline
UNKNOWN_KIND = "unknown-kind"      # no pool of that kind
POOL_EMPTY = "pool-empty"          # none held just now (all lent, or still reserving)
NOT_AUTHORIZED = "not-authorized"  # the authorize step said no
TIMEOUT = "timeout"                # said nothing in time
BUSY = "busy"                      # too many connections in all
LIMITED = "limited"                # over this user's limit (connections, borrows a second)
BAD_CONFIG = "bad-config"          # the daemon cannot start on its configuration file


class ProtocolError(Exception):
    """A request or reply that breaks the protocol: code and message for the reply."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class BadRequest(ProtocolError):
    """The client broke the protocol; code and message are the daemon's answer."""


class BadReply(ProtocolError):
    """The daemon's answer broke the protocol (or it is no daemon of ours); code is None."""

    def __init__(self, message):
        super().__init__(None, message)


class LineReader:
    """Bytes in as they arrive, whole lines out (without their newline); no I/O.

    Args:
        max_line_bytes: a longer line is an error, not buffered.
        error: makes what to raise for one (a BadRequest of TOO_LONG, or a BadReply).
    """

    def __init__(self, max_line_bytes, error):
        self.max_line_bytes = max_line_bytes
        self.error = error
        self.buffer = b""

    def feed(self, data):
        self.buffer += data

    def next_line(self):
        """The next whole line, or None until one has arrived.

        Raises:
            the reader's error: no newline within max_line_bytes.
        """
        line, newline, rest = self.buffer.partition(b"\n")
        if not newline:
            if len(self.buffer) > self.max_line_bytes:
                raise self.error()
            return None
        if len(line) > self.max_line_bytes:
            raise self.error()
        self.buffer = rest
        return line


def request_reader():
    """A LineReader for the daemon's side: requests of at most MAX_LINE_BYTES."""
    return LineReader(MAX_LINE_BYTES, lambda: BadRequest(TOO_LONG, _TOO_LONG))


def reply_reader():
    """A LineReader for the client's side: one reply, however many loans it lists."""
    return LineReader(MAX_REPLY_BYTES, lambda: BadReply(
        f"the daemon's reply is over {MAX_REPLY_BYTES} bytes without a newline"))


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
        BadRequest: anything but a well-formed request.
    """
    if len(line) > MAX_LINE_BYTES:
        raise BadRequest(TOO_LONG, _TOO_LONG)
    try:
        fields = jsonline.loads(line.decode("utf-8"))
    # RecursionError: "[" * 1000 fits in a line and exhausts the decoder's stack.
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest(BAD_REQUEST, "a request is one line of JSON") from None
    if not isinstance(fields, dict):
        raise BadRequest(BAD_REQUEST, "a request is a JSON object")
    action = fields.get("action")
    if action == STATUS:
        _only(fields, {"action"})
        return Request(STATUS)
    if action == BORROW:
        _only(fields, {"action", "kind", "fd"})
        kind, fd = fields.get("kind", "memory"), fields.get("fd", False)
        if not isinstance(kind, str) or not kind or "\0" in kind:
            raise BadRequest(BAD_REQUEST, '"kind" is "memory", "disk" or "disk:PATH"')
        if not isinstance(fd, bool):
            raise BadRequest(BAD_REQUEST, '"fd" is true or false')
        return Request(BORROW, kind, fd)
    raise BadRequest(BAD_REQUEST, '"action" is "borrow" or "status"')


def _only(fields, allowed):
    extra = sorted(set(fields) - allowed)
    if extra:
        raise BadRequest(BAD_REQUEST, f"unknown field {extra[0]!r}")


def encode_reply(fields):
    return _line(fields)


def borrow_reply(kind, size_bytes, fd):
    """A borrow granted: a pool's name, its reservations' size, and whether the
    reservation travels with the reply as a descriptor."""
    return _line({"ok": True, "action": BORROW, "kind": kind, "size": size_bytes, "fd": fd})


def status_reply(ready, pools, loans, config_error=None, **more):
    """What `holdingpen status` shows: pools (Pool.snapshot() each), loans (plain dicts),
    config_error (what is wrong with the file the daemon could not take, or None), and
    more: what else the daemon says (its "started" and metrics "counters")."""
    return _line({"ok": True, "action": STATUS, "ready": ready, "pools": pools, "loans": loans,
                  "config_error": config_error, **more})


def error_reply(code, message):
    return _line({"ok": False, "error": code, "message": message})


def decode_reply(line):
    """The reply's fields (a dict with "ok").

    Raises:
        BadReply: not a reply from a holdingpen daemon.
    """
    try:
        fields = jsonline.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):    # as in decode_request
        raise BadReply("the daemon's reply is not JSON") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("ok"), bool):
        raise BadReply("the daemon's reply has no \"ok\"")
    return fields


_TOO_LONG = f"a request is one line of at most {MAX_LINE_BYTES} bytes"


def _line(fields):
    return jsonline.dumps(fields).encode() + b"\n"
