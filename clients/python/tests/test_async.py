"""AsyncClient against a running digestd (see live.py)."""

import asyncio
import unittest
from typing import List

import digestd_client as dc

from .live import IDLE_TIMEOUT_S, SOCKET, key, require_op, skip_unless_daemon


@skip_unless_daemon
class AsyncClientTest(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.c = dc.AsyncClient(SOCKET, timeout=30)

    async def asyncTearDown(self) -> None:
        await self.c.close()

    async def test_hello_ping_status(self) -> None:
        h = await self.c.hello()
        self.assertEqual(h["protocol"], 1)
        self.assertTrue(await self.c.ping())
        self.assertIn("version", await self.c.status())

    async def test_pipelined_requests_get_their_own_answers(self) -> None:
        keys = [key(f"pipe-{i}") for i in range(20)]
        answers = await asyncio.gather(*(self.c.submit("noop", key=k) for k in keys))
        self.assertEqual([a["key"] for a in answers], keys)
        views = await asyncio.gather(*(self.c.result(k, wait=20) for k in keys))
        self.assertEqual([v["key"] for v in views], keys)
        self.assertTrue(all(v["status"] == "done" for v in views))

    async def test_submit_wait_and_errors(self) -> None:
        view = await self.c.submit("noop", {"sleep_ms": 20}, key=key("a-sync"), wait=10)
        self.assertEqual(view["status"], "done")
        with self.assertRaises(dc.BadRequest):
            await self.c.submit("no_such_kind")
        with self.assertRaises(dc.NotFound):
            await self.c.result(key("a-missing"))
        with self.assertRaises(dc.UnknownOp):
            await self.c.request("no_such_op")
        # An error in the middle of a pipeline fails only its own request.
        results = await asyncio.gather(self.c.ping(), self.c.result(key("a-missing-2")),
                                       self.c.ping(), return_exceptions=True)
        self.assertEqual(results[0], True)
        self.assertIsInstance(results[1], dc.NotFound)
        self.assertEqual(results[2], True)

    async def test_group_and_cancel(self) -> None:
        g = self.c.group(key("a-group"))
        answer = await g.submit_many([{"kind": "noop", "key": key(f"a-group-{i}")}
                                      for i in range(3)])
        self.assertEqual(answer["accepted"], 3)
        view = await g.result(wait=20)
        self.assertEqual(view["status"], "completed")
        k = key("a-cancel")
        await self.c.submit("noop", {"sleep_ms": 8000}, key=k)
        self.assertTrue((await self.c.cancel(k))["cancelled"])
        self.assertEqual((await self.c.result(k, wait=10))["status"], "cancelled")

    async def test_subscribe_partial_text(self) -> None:
        grp = key("a-sub")
        k = key("a-sub-1")
        sub = await self.c.subscribe(group=grp, partial=True, timeout=20)
        async with sub:
            await self.c.submit("generate", {"prompt": "Tell the keeper's story."}, key=k,
                                group=grp)
            texts: List[str] = []
            async for ev in sub:
                if ev["event"] == "text":
                    texts.append(ev["text"])
                elif ev["state"] == "done":
                    break
            self.assertGreaterEqual(len(texts), 2)
            view = await self.c.result(k)
            self.assertEqual(texts[-1], view["result"]["text"])
        self.assertTrue(sub.closed)

    async def test_reconnects_when_digestd_closed_an_idle_connection(self) -> None:
        if not IDLE_TIMEOUT_S:
            self.skipTest("$DIGESTD_TEST_IDLE_TIMEOUT_S (the daemon's [control] idle_timeout_s) "
                          "is not set")
        self.assertTrue(await self.c.ping())
        await asyncio.sleep(IDLE_TIMEOUT_S + 1.5)
        self.assertTrue(self.c._conn is not None and self.c._conn.dead, "digestd closed it")
        self.assertTrue(await self.c.ping())

    async def test_jobs_when_offered(self) -> None:
        require_op(self, "jobs")
        prefix = key("a-list") + "/"
        await self.c.submit_many([{"kind": "noop", "key": f"{prefix}{i}"} for i in range(3)])
        keys = [j["key"] async for j in self.c.iter_jobs(key_prefix=prefix, limit=2)]
        self.assertEqual(sorted(keys), [f"{prefix}{i}" for i in range(3)])


if __name__ == "__main__":
    unittest.main()
