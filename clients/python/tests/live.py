"""What the tests that talk to a running digestd share.

They run when $DIGESTD_SOCKET names digestd's control socket (clients/run-tests
starts a digestd with PostgreSQL and the fake Ollama and sets it), and are
skipped, saying so, otherwise.
"""

import os
import unittest
import uuid
from typing import Any, Dict, Optional

from digestd_client import Client

SOCKET = os.environ.get("DIGESTD_SOCKET", "")
RUN = uuid.uuid4().hex[:10]
MAX_BATCH = int(os.environ.get("DIGESTD_TEST_MAX_BATCH", "0") or 0)
IDLE_TIMEOUT_S = int(os.environ.get("DIGESTD_TEST_IDLE_TIMEOUT_S", "0") or 0)

_hello: Optional[Dict[str, Any]] = None


def key(name: str) -> str:
    """A key no other run of the tests used (the database outlives a run)."""
    return f"pytest:{RUN}:{name}"


def hello() -> Dict[str, Any]:
    global _hello
    if _hello is None:
        with Client(SOCKET) as c:
            _hello = c.hello()
    return _hello


def skip_unless_daemon(cls: type) -> type:
    if not SOCKET:
        return unittest.skip("no digestd to test against: $DIGESTD_SOCKET is not set "
                             "(clients/run-tests starts one and sets it)")(cls)
    return cls


def require_op(test: unittest.TestCase, op: str) -> None:
    """Skips the test when this digestd's hello does not list op (-v prints why)."""
    ops = hello().get("ops", [])
    if op not in ops:
        reason = (f"this digestd does not offer op {op!r} (hello lists {', '.join(ops)}); "
                  "the test runs once it does")
        test.skipTest(reason)


def require_feature(test: unittest.TestCase, feature: str) -> None:
    """Skips the test when this digestd's hello does not list the feature (-v prints why)."""
    features = hello().get("features", [])
    if feature not in features:
        test.skipTest(f"this digestd does not have feature {feature!r} (hello lists "
                      f"{', '.join(features)}); the test runs once it does")
