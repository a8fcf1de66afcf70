"""The blocking Client against a running digestd (see live.py)."""

import threading
import time
import unittest
from typing import Any, Dict, List

import digestd_client as dc

from .live import (IDLE_TIMEOUT_S, MAX_BATCH, SOCKET, key, require_feature, require_op,
                   skip_unless_daemon)

CHAPTER = ("Marta Hale came to the lighthouse on Gull Rock in the first week of October. "
           "The old keeper had left a ledger on the kitchen table.")


@skip_unless_daemon
class ClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.c = dc.Client(SOCKET, timeout=30)

    def tearDown(self) -> None:
        self.c.close()

    def test_hello_ping_status(self) -> None:
        h = self.c.hello()
        self.assertEqual(h["protocol"], 1)
        self.assertEqual(h["store"], "postgres")
        for op in ("hello", "ping", "status", "submit", "result", "cancel", "subscribe"):
            self.assertIn(op, h["ops"])
        for kind in ("noop", "summarize", "embed", "generate"):
            self.assertIn(kind, h["kinds"])
        self.assertTrue(self.c.ping())
        self.assertIn("version", self.c.status())

    def test_submit_is_idempotent_by_key(self) -> None:
        k = key("idem")
        first = self.c.submit("noop", key=k)
        self.assertEqual(first["key"], k)
        self.assertFalse(first["existing"])
        again = self.c.submit("noop", key=k)
        self.assertTrue(again["existing"])
        self.assertEqual(self.c.result(k, wait=10)["status"], "done")

    def test_submit_without_key_gets_one(self) -> None:
        answer = self.c.submit("noop")
        self.assertTrue(answer["key"].startswith("auto:"), answer)

    def test_submit_with_wait_answers_the_job_view(self) -> None:
        view = self.c.submit("noop", {"sleep_ms": 50}, key=key("sync"), wait=10)
        self.assertEqual(view["status"], "done")
        self.assertEqual(view["lane"], "interactive")
        self.assertEqual(view["result"]["slept_ms"], 50)

    def test_result_waits(self) -> None:
        k = key("wait")
        self.c.submit("noop", {"sleep_ms": 300}, key=k)
        self.assertIn(self.c.result(k)["status"], ("queued", "running"))
        start = time.monotonic()
        view = self.c.result(k, wait=10)
        self.assertEqual(view["status"], "done")
        self.assertLess(time.monotonic() - start, 9)
        # A wait that runs out is an answer, not an error.
        k2 = key("wait-out")
        self.c.submit("noop", {"sleep_ms": 3000}, key=k2)
        view = self.c.result(k2, wait=0.2)
        self.assertIn(view["status"], ("queued", "running"))
        self.c.cancel(k2)

    def test_summarize_embed_generate(self) -> None:
        s = self.c.submit("summarize", {"title": "Chapter 1", "text": CHAPTER, "max_words": 40},
                          key=key("sum"), wait=30)
        self.assertEqual(s["status"], "done", s)
        self.assertTrue(s["result"]["summary"], s)
        self.assertFalse(s["result"]["fallback"], s)
        e = self.c.submit("embed", {"texts": ["lighthouse", "ledger"]}, key=key("emb"), wait=30)
        self.assertEqual(e["status"], "done", e)
        self.assertEqual(len(e["result"]["embeddings"]), 2)
        self.assertEqual(len(e["result"]["embeddings"][0]), e["result"]["dims"])
        g = self.c.submit("generate", {"prompt": "Name a lighthouse."}, key=key("gen"), wait=30)
        self.assertEqual(g["status"], "done", g)
        self.assertTrue(g["result"]["text"])

    def test_submit_many_into_a_group(self) -> None:
        grp = key("batch")
        jobs = [{"kind": "noop", "key": key(f"batch-{i}"), "input": {"sleep_ms": 20 * i}}
                for i in range(5)]
        answer = self.c.submit_many(jobs, group=grp)
        self.assertEqual((answer["accepted"], answer["failed"]), (5, 0))
        self.assertEqual([j["key"] for j in answer["jobs"]], [j["key"] for j in jobs])
        view = self.c.result(group=grp, wait=20)
        self.assertEqual(view["status"], "completed")
        self.assertEqual((view["total"], view["ready"]), (5, 5))
        self.assertEqual([p["key"] for p in view["parts"]], [j["key"] for j in jobs])
        self.assertTrue(all(p["group"] == grp for p in view["parts"]))

    def test_group_handle(self) -> None:
        g = self.c.group(key("handle"))
        self.assertIn(g.submit("noop", key=key("handle-1"))["status"], ("queued", "running", "done"))
        g.submit_many([{"kind": "noop", "key": key("handle-2")}])
        view = g.result(wait=20)
        self.assertEqual(view["status"], "completed")
        self.assertEqual(view["total"], 2)

    def test_bad_batch_stores_nothing(self) -> None:
        jobs: List[Dict[str, Any]] = [{"kind": "noop", "key": key("bad-0")},
                                      {"kind": "no_such_kind", "key": key("bad-1")}]
        with self.assertRaises(dc.BadRequest) as ctx:
            self.c.submit_many(jobs)
        self.assertIn("jobs[1]", ctx.exception.message)
        with self.assertRaises(dc.NotFound):
            self.c.result(key("bad-0"))

    def test_too_large_batch(self) -> None:
        if not MAX_BATCH:
            self.skipTest("$DIGESTD_TEST_MAX_BATCH (the daemon's [jobs] max_batch) is not set")
        jobs = [{"kind": "noop"} for _ in range(MAX_BATCH + 1)]
        with self.assertRaises(dc.TooLarge) as ctx:
            self.c.submit_many(jobs)
        self.assertEqual(ctx.exception.code, "too_large")

    def test_error_answers_raise_their_class(self) -> None:
        with self.assertRaises(dc.BadRequest) as bad:
            self.c.submit("no_such_kind")
        self.assertIn("summarize", bad.exception.message)  # it lists the known kinds
        with self.assertRaises(dc.BadRequest):
            self.c.submit("summarize", {"text": 7})
        with self.assertRaises(dc.NotFound) as nf:
            self.c.result(key("never-submitted"))
        self.assertEqual(nf.exception.answer["ok"], False)  # type: ignore[index]
        with self.assertRaises(dc.NotFound):
            self.c.result(group=key("no-group"))
        with self.assertRaises(dc.UnknownOp):
            self.c.request("no_such_op")
        with self.assertRaises(dc.NotFound):
            self.c.cancel(key("never-submitted"))
        # The connection stays usable after error answers.
        self.assertTrue(self.c.ping())

    def test_cancel(self) -> None:
        k = key("cancel")
        self.c.submit("noop", {"sleep_ms": 8000}, key=k)
        answer = self.c.cancel(k)
        self.assertTrue(answer["cancelled"], answer)
        self.assertEqual(self.c.result(k, wait=10)["status"], "cancelled")
        # Cancelling a finished job changes nothing.
        self.assertFalse(self.c.cancel(k)["cancelled"])

    def test_workers_reads_limits(self) -> None:
        w = self.c.workers()
        self.assertLessEqual(w["min"], w["max"])

    def test_one_client_shared_by_threads(self) -> None:
        errors: List[BaseException] = []
        got: Dict[str, str] = {}

        def work(i: int) -> None:
            try:
                k = key(f"thread-{i}")
                got[k] = self.c.submit("noop", key=k)["key"]
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(got), 8)
        self.assertTrue(all(k == v for k, v in got.items()))

    def test_reconnects_after_close(self) -> None:
        self.assertTrue(self.c.ping())
        self.c.close()
        self.assertTrue(self.c.ping())

    def test_reconnects_when_digestd_closed_an_idle_connection(self) -> None:
        if not IDLE_TIMEOUT_S:
            self.skipTest("$DIGESTD_TEST_IDLE_TIMEOUT_S (the daemon's [control] idle_timeout_s) "
                          "is not set")
        self.assertTrue(self.c.ping())
        time.sleep(IDLE_TIMEOUT_S + 1.5)
        line = self.c._line
        self.assertTrue(line is not None and line.closed_by_peer(), "digestd closed it")
        self.assertTrue(self.c.ping())

    def test_connect(self) -> None:
        with dc.connect(SOCKET) as c:
            self.assertTrue(c.ping())


@skip_unless_daemon
class SubscribeTest(unittest.TestCase):
    def test_events_and_partial_text(self) -> None:
        grp = key("sub")
        k = key("sub-1")
        with dc.Client(SOCKET) as c, c.subscribe(group=grp, partial=True, timeout=20) as sub:
            self.assertTrue(sub.answer["subscribed"])
            c.submit("summarize", {"text": CHAPTER, "max_words": 30}, key=k, group=grp)
            states: List[str] = []
            texts: List[str] = []
            for ev in sub:
                self.assertEqual(ev["key"], k)
                self.assertEqual(ev["group"], grp)
                if ev["event"] == "text":
                    texts.append(ev["text"])
                elif ev["event"] == "job":
                    states.append(ev["state"])
                    if ev["state"] in ("done", "failed", "cancelled"):
                        break
            self.assertEqual(states[0], "queued")
            self.assertIn("started", states)
            self.assertEqual(states[-1], "done")
            self.assertGreaterEqual(len(texts), 2, "the summary was sent as it grew")
            for a, b in zip(texts, texts[1:]):
                self.assertTrue(b.startswith(a), (a, b))
            view = c.result(k)
            self.assertEqual(texts[-1].strip(), view["result"]["summary"].strip())

    def test_filters(self) -> None:
        prefix = key("pref") + "/"
        with dc.Client(SOCKET) as c, \
                c.subscribe(prefix=prefix, timeout=20) as by_prefix, \
                c.subscribe(key=prefix + "b", timeout=20) as by_key:
            c.submit("noop", key=prefix + "a")
            c.submit("noop", key=key("elsewhere"))
            c.submit("noop", key=prefix + "b")
            seen = set()
            for ev in by_prefix:
                self.assertTrue(ev["key"].startswith(prefix), ev)
                if ev["state"] == "done":
                    seen.add(ev["key"])
                    if len(seen) == 2:
                        break
            self.assertEqual(seen, {prefix + "a", prefix + "b"})
            for ev in by_key:
                self.assertEqual(ev["key"], prefix + "b")
                if ev["state"] == "done":
                    break

    def test_bad_filter_raises(self) -> None:
        with dc.Client(SOCKET) as c:
            with self.assertRaises(dc.BadRequest):
                c.subscribe(lane="sideways")


@skip_unless_daemon
class NewOpsTest(unittest.TestCase):
    """Ops that arrive in a later digestd: each test runs once hello lists its op."""

    def setUp(self) -> None:
        self.c = dc.Client(SOCKET, timeout=30)

    def tearDown(self) -> None:
        self.c.close()

    def failed_job(self, name: str) -> str:
        # The fake Ollama knows no such model: the job fails at once.
        k = key(name)
        self.c.submit("generate", {"prompt": "x", "model": "no-such-model"}, key=k)
        self.assertEqual(self.c.result(k, wait=20)["status"], "failed")
        return k

    def test_jobs_lists_pages(self) -> None:
        require_op(self, "jobs")
        prefix = key("list") + "/"
        self.c.submit_many([{"kind": "noop", "key": f"{prefix}{i}"} for i in range(5)])
        page = self.c.jobs(key_prefix=prefix, limit=2)
        self.assertLessEqual(len(page["jobs"]), 2)
        self.assertIn("next", page)
        keys = [j["key"] for j in self.c.iter_jobs(key_prefix=prefix, limit=2)]
        self.assertEqual(sorted(keys), [f"{prefix}{i}" for i in range(5)])

    def test_retry(self) -> None:
        require_op(self, "retry")
        k = self.failed_job("retry")
        with self.c.subscribe(key=k, timeout=20) as events:
            self.c.retry(k)
            states = []
            for ev in events:
                states.append(ev["state"])
                if ev["state"] in ("done", "failed", "cancelled"):
                    break
        self.assertEqual(states[0], "queued")
        self.assertIn("started", states, "the retried job ran again")
        self.assertEqual(self.c.result(k)["status"], "failed")
        with self.assertRaises(dc.BadState):
            self.c.retry(self.c.submit("noop", key=key("retry-done"), wait=10)["key"])

    def test_conflict_and_replace(self) -> None:
        require_feature(self, "submit_conflict")
        k = key("replace")
        self.c.submit("noop", {"sleep_ms": 10}, key=k, wait=10)
        with self.assertRaises(dc.Conflict) as ctx:
            self.c.submit("noop", {"sleep_ms": 20}, key=k)
        self.assertIn("replace", ctx.exception.message)
        answer = self.c.submit("noop", {"sleep_ms": 20}, key=k, replace=True)
        self.assertTrue(answer.get("replaced"), answer)
        self.assertEqual(self.c.result(k, wait=10)["result"]["slept_ms"], 20)

    def test_ttl_reruns_an_expired_result(self) -> None:
        require_feature(self, "ttl")
        k = key("ttl")
        self.c.submit("noop", {"sleep_ms": 10}, key=k, ttl=1, wait=10)
        fresh = self.c.submit("noop", {"sleep_ms": 10}, key=k, ttl=1)
        self.assertTrue(fresh["existing"], fresh)
        self.assertNotIn("expired", fresh)
        time.sleep(1.2)
        again = self.c.submit("noop", {"sleep_ms": 10}, key=k, ttl=1)
        self.assertTrue(again.get("expired"), again)
        self.assertEqual(self.c.result(k, wait=10)["status"], "done")
        with self.assertRaises(ValueError):
            self.c.submit("noop", key=key("ttl-bad"), ttl=-1)

    def test_after_gives_a_part_the_results_it_needs(self) -> None:
        require_feature(self, "after")
        grp = self.c.group(key("after"))
        grp.submit_many([
            {"kind": "similarity", "key": f"{grp.name}:x", "input": {"a": [1, 0], "b": [0.6, 0.8]}},
            {"kind": "similarity", "key": f"{grp.name}:y", "input": {"a": [1, 0], "b": [1, 0]}},
            {"kind": "noop", "key": f"{grp.name}:z", "after": [f"{grp.name}:x", f"{grp.name}:y"]},
        ])
        view = grp.result(wait=20)
        self.assertEqual(view["status"], "completed", view)
        with self.assertRaises(dc.BadRequest) as ctx:
            self.c.submit_many([{"kind": "noop", "key": key("lone"), "group": "q",
                                 "after": ["nothing"]}])
        self.assertIn("earlier job", ctx.exception.message)

    def test_delete(self) -> None:
        require_op(self, "delete")
        k = key("delete")
        self.c.submit("noop", key=k, wait=10)
        answer = self.c.delete(k)
        self.assertEqual((answer["deleted"], answer["skipped"]), (1, 0))
        with self.assertRaises(dc.NotFound):
            self.c.result(k)

    def test_cancel_group(self) -> None:
        require_feature(self, "cancel_group")
        grp = self.c.group(key("cancel-group"))
        grp.submit_many([{"kind": "noop", "input": {"sleep_ms": 8000}} for _ in range(3)])
        self.assertEqual(grp.cancel()["cancelled"], 3)
        view = grp.result(wait=20)
        self.assertEqual(view["status"], "failed")
        self.assertTrue(all(p["status"] == "cancelled" for p in view["parts"]))


if __name__ == "__main__":
    unittest.main()
