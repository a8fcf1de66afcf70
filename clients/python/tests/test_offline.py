"""Checks that need no digestd: errors by code, request building, the socket path."""

import os
import unittest
from unittest import mock

import digestd_client as dc
from digestd_client import _protocol as p

CODES = {
    "bad_request": dc.BadRequest, "unknown_op": dc.UnknownOp, "too_large": dc.TooLarge,
    "not_found": dc.NotFound, "unavailable": dc.Unavailable, "forbidden": dc.Forbidden,
    "queue_full": dc.QueueFull, "invalid_config": dc.InvalidConfig, "internal": dc.Internal,
    "conflict": dc.Conflict, "bad_state": dc.BadState,
}


class ErrorsTest(unittest.TestCase):
    def test_every_code_has_its_class(self) -> None:
        for code, cls in CODES.items():
            answer = {"ok": False, "id": 1, "error": {"code": code, "message": "what; do this"}}
            err = dc.error_from_answer(answer)
            self.assertIs(type(err), cls, code)
            self.assertIsInstance(err, dc.DigestdError)
            self.assertEqual(err.code, code)
            self.assertEqual(err.message, "what; do this")
            self.assertIs(err.answer, answer)
            self.assertEqual(str(err), f"{code}: what; do this")
            with self.assertRaises(cls):
                p.check(answer)

    def test_the_docs_table_is_covered(self) -> None:
        # Every code in docs/protocol.md's "Error codes" table has a class.
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
        docs = os.path.join(root, "docs/protocol.md")
        if not os.path.exists(docs):
            self.skipTest("docs/protocol.md is not beside this checkout")
        with open(docs, encoding="utf-8") as f:
            text = f.read()
        table = text.split("## Error codes", 1)[1]
        codes = [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")]
        self.assertTrue(codes)
        for code in codes:
            self.assertIn(code, dc.ERRORS_BY_CODE, f"{code} has no exception class")

    def test_unknown_code_is_the_base_class(self) -> None:
        err = dc.error_from_answer({"ok": False, "error": {"code": "brand_new", "message": "m"}})
        self.assertIs(type(err), dc.DigestdError)
        self.assertEqual(err.code, "brand_new")
        err = dc.error_from_answer({"ok": False})
        self.assertIs(type(err), dc.DigestdError)
        self.assertIn("without an error object", str(err))

    def test_ok_answer_passes(self) -> None:
        self.assertEqual(p.check({"ok": True, "pong": True}), {"ok": True, "pong": True})


class RequestsTest(unittest.TestCase):
    def test_submit(self) -> None:
        req = p.submit_request("summarize", {"text": "t"}, "k", "g", "interactive", 1.5, True)
        self.assertEqual(req, {"op": "submit", "kind": "summarize", "input": {"text": "t"},
                               "key": "k", "group": "g", "lane": "interactive",
                               "replace": True, "wait_ms": 1500})
        self.assertEqual(p.submit_request("noop", None, None, None, None, None, None),
                         {"op": "submit", "kind": "noop"})
        with self.assertRaisesRegex(ValueError, "at most 300 seconds"):
            p.submit_request("noop", None, None, None, None, 301, None)
        with self.assertRaisesRegex(ValueError, "kind"):
            p.submit_request("", None, None, None, None, None, None)
        with self.assertRaisesRegex(ValueError, "0 or more"):
            p.submit_request("noop", None, None, None, None, -1, None)

    def test_batch_defaults_group_and_lane(self) -> None:
        req = p.batch_request([{"kind": "noop"}, {"kind": "noop", "group": "other"}], "g",
                              "interactive")
        self.assertEqual(req["jobs"], [{"kind": "noop", "group": "g", "lane": "interactive"},
                                       {"kind": "noop", "group": "other",
                                        "lane": "interactive"}])
        with self.assertRaisesRegex(ValueError, "at least one job"):
            p.batch_request([], None, None)
        with self.assertRaisesRegex(ValueError, r"jobs\[0\]"):
            p.batch_request(["noop"], None, None)  # type: ignore[list-item]

    def test_key_or_group(self) -> None:
        self.assertEqual(p.target("k", None, "result"), {"key": "k"})
        self.assertEqual(p.target(None, "g", "result"), {"group": "g"})
        with self.assertRaisesRegex(ValueError, "exactly one"):
            p.target(None, None, "cancel")
        with self.assertRaisesRegex(ValueError, "exactly one"):
            p.target("k", "g", "cancel")

    def test_jobs_and_subscribe(self) -> None:
        self.assertEqual(p.jobs_request("done", None, "noop", None, "a:", None, 60, 10, "c"),
                         {"op": "jobs", "status": "done", "kind": "noop", "key_prefix": "a:",
                          "min_age_s": 60, "limit": 10, "cursor": "c"})
        self.assertEqual(p.jobs_request(("failed", "cancelled"), "g", None, None, None, 3600,
                                        None, None, None),
                         {"op": "jobs", "status": ["failed", "cancelled"], "group": "g",
                          "max_age_s": 3600})
        self.assertEqual(p.subscribe_request(None, "g", None, None, True),
                         {"op": "subscribe", "group": "g", "partial": True})

    def test_terminal(self) -> None:
        self.assertTrue(p.is_terminal({"key": "k", "status": "done"}))
        self.assertFalse(p.is_terminal({"key": "k", "group": "g", "status": "queued"}))
        self.assertTrue(p.is_terminal({"group": "g", "total": 2, "status": "partial",
                                       "parts": []}))
        self.assertFalse(p.is_terminal({"group": "g", "total": 2, "status": "in_progress",
                                        "parts": []}))

    def test_encoding_is_one_ascii_line(self) -> None:
        line = p.encode({"op": "submit", "input": {"text": "naïve\nline"}})
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(p.decode(line[:-1])["input"]["text"], "naïve\nline")
        with self.assertRaises(dc.DigestdError):
            p.decode(b"not json")
        with self.assertRaises(dc.DigestdError):
            p.decode(b"[1]")

    def test_socket_path(self) -> None:
        with mock.patch.dict(os.environ, {"DIGESTD_SOCKET": "/tmp/x.sock"}):
            self.assertEqual(p.socket_path(None), "/tmp/x.sock")
            self.assertEqual(p.socket_path("/a.sock"), "/a.sock")
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(p.socket_path(None), "/run/digestd/control.sock")
            self.assertEqual(dc.Client().socket_path, dc.DEFAULT_SOCKET)


class NoDaemonTest(unittest.TestCase):
    def test_connection_failure_names_the_socket(self) -> None:
        with self.assertRaises(dc.ConnectionFailed) as ctx:
            dc.Client("/nonexistent/digestd.sock").ping()
        self.assertEqual(ctx.exception.code, "io_error")
        self.assertIn("/nonexistent/digestd.sock", str(ctx.exception))
        self.assertIn("DIGESTD_SOCKET", str(ctx.exception))


class AsyncNoDaemonTest(unittest.IsolatedAsyncioTestCase):
    async def test_connection_failure_names_the_socket(self) -> None:
        client = dc.AsyncClient("/nonexistent/digestd.sock")
        with self.assertRaises(dc.ConnectionFailed) as ctx:
            await client.ping()
        self.assertIn("/nonexistent/digestd.sock", str(ctx.exception))
        await client.close()


if __name__ == "__main__":
    unittest.main()
