"""Both clients against a stand-in server on a private socket, which answers
in awkward pieces: framing, pipelining, timeouts. No digestd needed."""

import asyncio
import json
import os
import socket
import tempfile
import threading
import time
import unittest
from typing import Any, Callable, Dict, List

import digestd_client as dc

Respond = Callable[[Dict[str, Any]], str]


def standard(req: Dict[str, Any]) -> str:
    if req["op"] == "subscribe":
        return ('{"ok":true,"subscribed":true,"max_unread_bytes":1}\n'
                '{"event":"text","key":"k","text":"café"}\r\n'
                '{"event":"job","state":"done","key":"k"}\n')
    if req["op"] == "result":
        return '{"ok":false,"error":{"code":"not_found","message":"no job k; submit it first"}}\n'
    return json.dumps({"ok": True, "echo": req, "text": "naïve résumé"},
                      ensure_ascii=False) + "\n"


class FakeServer:
    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.dir = tempfile.mkdtemp(prefix="digestd-fake-")
        self.path = os.path.join(self.dir, "s.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen()
        self.conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    out = self.respond(json.loads(line)).encode("utf-8")
                    # One byte, then the rest split inside a multi-byte character.
                    cut = out.find(b"\xc3") + 1 if b"\xc3" in out else 2
                    for piece in (out[:1], out[1:cut], out[cut:]):
                        conn.sendall(piece)
                        time.sleep(0.005)
        except OSError:
            return

    def close(self) -> None:
        self.listener.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


class SyncFramingTest(unittest.TestCase):
    def test_pieces_multibyte_and_events_with_the_answer(self) -> None:
        server = FakeServer(standard)
        self.addCleanup(server.close)
        with dc.Client(server.path, timeout=2) as c:
            a = c.request("one", x="é")
            self.assertEqual(a["echo"], {"op": "one", "x": "é"})
            self.assertEqual(a["text"], "naïve résumé")
            with self.assertRaises(dc.NotFound) as ctx:
                c.result("k")
            self.assertEqual(ctx.exception.message, "no job k; submit it first")
            with c.subscribe(key="k", timeout=2) as sub:
                self.assertEqual([next(sub), next(sub)],
                                 [{"event": "text", "key": "k", "text": "café"},
                                  {"event": "job", "state": "done", "key": "k"}])

    def test_timeout_then_a_fresh_connection(self) -> None:
        calls = []

        def respond(req: Dict[str, Any]) -> str:
            calls.append(req)
            return "" if len(calls) == 1 else '{"ok":true,"pong":true}\n'

        server = FakeServer(respond)
        self.addCleanup(server.close)
        with dc.Client(server.path, timeout=0.2) as c:
            with self.assertRaisesRegex(TimeoutError, "'ping'"):
                c.ping()
            self.assertTrue(c.ping())


class AsyncFramingTest(unittest.IsolatedAsyncioTestCase):
    async def test_pipelined_pieces_and_events(self) -> None:
        server = FakeServer(standard)
        self.addCleanup(server.close)
        async with dc.AsyncClient(server.path, timeout=2) as c:
            a, b, missing = await asyncio.gather(c.request("one", x="é"), c.request("two"),
                                                 c.result("k"), return_exceptions=True)
            self.assertEqual(a["echo"], {"op": "one", "x": "é"})  # type: ignore[index]
            self.assertEqual(b["echo"]["op"], "two")  # type: ignore[index]
            self.assertIsInstance(missing, dc.NotFound)
            sub = await c.subscribe(key="k", timeout=2)
            async with sub:
                got = []
                async for ev in sub:
                    got.append(ev)
                    if ev.get("state") == "done":
                        break
            self.assertEqual(got, [{"event": "text", "key": "k", "text": "café"},
                                   {"event": "job", "state": "done", "key": "k"}])

    async def test_timeout_then_a_fresh_connection(self) -> None:
        calls = []

        def respond(req: Dict[str, Any]) -> str:
            calls.append(req)
            return "" if len(calls) == 1 else '{"ok":true,"pong":true}\n'

        server = FakeServer(respond)
        self.addCleanup(server.close)
        async with dc.AsyncClient(server.path, timeout=0.2) as c:
            with self.assertRaisesRegex(TimeoutError, "'ping'"):
                await c.ping()
            self.assertTrue(await c.ping())


if __name__ == "__main__":
    unittest.main()
