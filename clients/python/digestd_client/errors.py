"""Exceptions raised by the digestd client: one class per error code.

Every error answer of digestd carries a stable ``code`` and a ``message``
that says what was wrong and what to do (docs/protocol.md, "Error codes").
The client raises the subclass of :class:`DigestdError` named after the
code; a code this client does not know raises :class:`DigestdError` itself,
so ``except DigestdError`` catches every error answer.
"""

from typing import Any, Dict, Optional, Type


class DigestdError(Exception):
    """An error answer from digestd, or a failure to talk to it.

    ``code`` is the protocol's error code (``"bad_request"``, ...),
    ``message`` digestd's message and ``answer`` the whole answer object
    (for a batch submit that stored nothing it holds ``jobs``, ``accepted``
    and ``failed``), or None when the error did not come from an answer.
    """

    code: str = ""

    def __init__(self, message: str, code: Optional[str] = None,
                 answer: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.answer = answer

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message


class BadRequest(DigestdError):
    """``bad_request``: the request is malformed or a field is wrong."""
    code = "bad_request"


class UnknownOp(DigestdError):
    """``unknown_op``: this digestd does not know the op."""
    code = "unknown_op"


class TooLarge(DigestdError):
    """``too_large``: the line is over max_line_bytes, or a batch over max_batch."""
    code = "too_large"


class NotFound(DigestdError):
    """``not_found``: no job or group with that name."""
    code = "not_found"


class Unavailable(DigestdError):
    """``unavailable``: digestd cannot do it now; try again later."""
    code = "unavailable"


class Forbidden(DigestdError):
    """``forbidden``: this peer may not use a mutating op."""
    code = "forbidden"


class QueueFull(DigestdError):
    """``queue_full``: a ring is full; submit again shortly."""
    code = "queue_full"


class InvalidConfig(DigestdError):
    """``invalid_config``: ``reload`` found a bad config file."""
    code = "invalid_config"


class Internal(DigestdError):
    """``internal``: a bug or an unexpected database error."""
    code = "internal"


class Conflict(DigestdError):
    """``conflict``: a submit named an existing key with another kind or input;
    submit with ``replace=True`` or use a new key."""
    code = "conflict"


class BadState(DigestdError):
    """``bad_state``: the job is not in a state the op applies to (a retry of a
    job that did not fail, a replacing submit of a running job)."""
    code = "bad_state"


class ConnectionFailed(DigestdError):
    """``io_error``: the socket could not be reached, or closed mid-request.

    Raised by the client itself, never sent by digestd.
    """
    code = "io_error"


ERRORS_BY_CODE: Dict[str, Type[DigestdError]] = {
    cls.code: cls
    for cls in (BadRequest, UnknownOp, TooLarge, NotFound, Unavailable, Forbidden,
                QueueFull, InvalidConfig, Internal, Conflict, BadState, ConnectionFailed)
}


def error_from_answer(answer: Dict[str, Any]) -> DigestdError:
    """The exception for an error answer (``{"ok": false, "error": {...}}``)."""
    err = answer.get("error")
    if not isinstance(err, dict):
        return DigestdError("digestd answered ok:false without an error object: "
                            f"{answer!r}; this is a bug in digestd, report it",
                            "", answer)
    code = str(err.get("code", ""))
    message = str(err.get("message", ""))
    cls = ERRORS_BY_CODE.get(code, DigestdError)
    return cls(message, code, answer)
