"""A client for digestd's control socket (docs/protocol.md in digestd's repository).

    from digestd_client import Client

    with Client() as c:                      # $DIGESTD_SOCKET or /run/digestd/control.sock
        c.submit("summarize", {"text": chapter}, key="book:7/ch:3", group="book:7")
        view = c.result("book:7/ch:3", wait=30)

:class:`AsyncClient` offers the same methods as coroutines. Error answers
raise the :class:`DigestdError` subclass of their code.
"""

from ._protocol import DEFAULT_SOCKET, GROUP_TERMINAL, JOB_TERMINAL, MAX_WAIT_MS
from .aio import AsyncClient, AsyncGroup, AsyncSubscription
from .client import Client, Group, Subscription, connect
from .errors import (ERRORS_BY_CODE, BadRequest, BadState, Conflict, ConnectionFailed, DigestdError,
                     Forbidden, Internal, InvalidConfig, NotFound, QueueFull, TooLarge,
                     Unavailable, UnknownOp, error_from_answer)

__version__ = "0.1.0"

__all__ = [
    "Client", "Group", "Subscription", "connect",
    "AsyncClient", "AsyncGroup", "AsyncSubscription",
    "DigestdError", "BadRequest", "UnknownOp", "TooLarge", "NotFound", "Unavailable",
    "Forbidden", "QueueFull", "InvalidConfig", "Internal", "Conflict", "BadState",
    "ConnectionFailed",
    "ERRORS_BY_CODE", "error_from_answer",
    "DEFAULT_SOCKET", "MAX_WAIT_MS", "JOB_TERMINAL", "GROUP_TERMINAL",
]
