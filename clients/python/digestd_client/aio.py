"""The asyncio client: one connection, requests pipelined.

Requests from many tasks share the connection: each is written at once and
answers come back in request order (docs/protocol.md, "Framing"), so a
long ``result`` wait holds back the answers of requests sent after it on
the same client; use a second :class:`AsyncClient` for those.
"""

import asyncio
import collections
import time
from typing import (Any, AsyncIterator, Deque, Dict, Iterable, List, Mapping, Optional, Sequence,
                    Union)

from . import _protocol as p
from .errors import ConnectionFailed

Json = Dict[str, Any]

#: Longest answer or event line read (asyncio's default is 64 KiB).
LINE_LIMIT = 64 * 1024 * 1024


async def _open(path: str) -> "tuple[asyncio.StreamReader, asyncio.StreamWriter]":
    try:
        return await asyncio.open_unix_connection(path, limit=LINE_LIMIT)
    except OSError as e:
        raise ConnectionFailed(
            f"cannot connect to digestd at {path}: {e.strerror or e}; start digestd, or "
            "pass its control socket (the socket= argument or $DIGESTD_SOCKET)") from None


async def _read_line(reader: asyncio.StreamReader, path: str) -> bytes:
    try:
        line = await reader.readline()
    except (OSError, ValueError, asyncio.LimitOverrunError) as e:
        raise ConnectionFailed(f"cannot read from digestd at {path}: {e}; "
                               "the connection was lost, try again") from None
    if not line.endswith(b"\n"):
        raise ConnectionFailed(f"digestd at {path} closed the connection before answering "
                               "(it stopped, or it closes idle clients); try again")
    return line[:-1]


class _Connection:
    def __init__(self, path: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.path = path
        self.reader = reader
        self.writer = writer
        self.pending: Deque["asyncio.Future[Json]"] = collections.deque()
        self.dead = False
        self.task = asyncio.ensure_future(self._read_answers())

    async def _read_answers(self) -> None:
        error: BaseException
        try:
            while True:
                line = await _read_line(self.reader, self.path)
                answer = p.decode(line)
                if not self.pending:
                    continue
                fut = self.pending.popleft()
                if not fut.done():
                    fut.set_result(answer)
        except BaseException as e:  # includes cancellation at close()
            error = e
        self.dead = True
        if not isinstance(error, ConnectionFailed):
            error = ConnectionFailed(f"the connection to digestd at {self.path} was closed "
                                     f"({error!r}); try again")
        while self.pending:
            fut = self.pending.popleft()
            if not fut.done():
                fut.set_exception(error)

    def send(self, data: bytes) -> "asyncio.Future[Json]":
        fut: "asyncio.Future[Json]" = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        self.writer.write(data)
        return fut

    async def close(self) -> None:
        self.dead = True
        self.task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
        try:
            await self.task
        except BaseException:
            pass


class AsyncSubscription:
    """An event stream: ``async for event in sub`` yields one dict per line.

    Made by :meth:`AsyncClient.subscribe`; it owns a connection of its own,
    which :meth:`close` (or leaving an ``async with`` block) closes.
    Iteration ends when digestd closes the connection. With ``timeout`` set,
    waiting longer than that for the next event raises TimeoutError (the
    stream stays usable).
    """

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 answer: Json, timeout: Optional[float]) -> None:
        self._path = path
        self._reader = reader
        self._writer = writer
        self.answer = answer
        self.timeout = timeout
        self.closed = False

    def __aiter__(self) -> "AsyncSubscription":
        return self

    async def __anext__(self) -> Json:
        if self.closed:
            raise StopAsyncIteration
        try:
            line = await asyncio.wait_for(_read_line(self._reader, self._path), self.timeout)
        except ConnectionFailed:
            await self.close()
            raise StopAsyncIteration from None
        except asyncio.TimeoutError:
            raise TimeoutError(f"no event from digestd within {self.timeout} s") from None
        return p.decode(line)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass

    async def __aenter__(self) -> "AsyncSubscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncGroup:
    """Jobs that share a group name (see :class:`digestd_client.Group`)."""

    def __init__(self, client: "AsyncClient", name: str) -> None:
        self.client = client
        self.name = name

    async def submit(self, kind: str, input: Optional[Mapping[str, Any]] = None, *,
                     key: Optional[str] = None, lane: Optional[str] = None) -> Json:
        return await self.client.submit(kind, input, key=key, group=self.name, lane=lane)

    async def submit_many(self, jobs: Iterable[Mapping[str, Any]], *,
                          lane: Optional[str] = None) -> Json:
        return await self.client.submit_many(jobs, group=self.name, lane=lane)

    async def result(self, wait: Optional[float] = None) -> Json:
        return await self.client.result(group=self.name, wait=wait)

    async def cancel(self) -> Json:
        return await self.client.cancel(group=self.name)

    async def retry(self, lane: Optional[str] = None) -> Json:
        return await self.client.retry(group=self.name, lane=lane)

    async def delete(self) -> Json:
        return await self.client.delete(group=self.name)

    async def subscribe(self, *, partial: bool = False,
                        timeout: Optional[float] = None) -> AsyncSubscription:
        return await self.client.subscribe(group=self.name, partial=partial, timeout=timeout)


class AsyncClient:
    """The asyncio counterpart of :class:`digestd_client.Client`: the same
    methods, as coroutines. ``timeout`` bounds each request in seconds on
    top of the wait it asks digestd for (None: no bound).
    """

    def __init__(self, socket: Optional[str] = None, *, timeout: Optional[float] = 30.0) -> None:
        self.socket_path = p.socket_path(socket)
        self.timeout = timeout
        self._conn: Optional[_Connection] = None
        self._connecting: Optional[asyncio.Lock] = None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connection(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            # A connection digestd closed (idle timeout, restart) is replaced.
            if self._conn is None or self._conn.dead:
                if self._conn is not None:
                    await self._conn.close()
                reader, writer = await _open(self.socket_path)
                self._conn = _Connection(self.socket_path, reader, writer)
            return self._conn

    async def request(self, op: str, **fields: Any) -> Json:
        req: Json = {"op": op}
        req.update(p.drop_none(fields))
        return await self.send(req)

    async def send(self, request: Mapping[str, Any]) -> Json:
        return p.check(await self.send_raw(request))

    async def send_raw(self, request: Mapping[str, Any]) -> Json:
        data = p.encode(request)
        conn = await self._connection()
        fut = conn.send(data)
        try:
            await conn.writer.drain()
        except OSError as e:
            raise ConnectionFailed(f"cannot send to digestd at {self.socket_path}: {e}; "
                                   "the connection was lost, try again") from None
        timeout = self.timeout
        wait_ms = request.get("wait_ms")
        if timeout is not None and isinstance(wait_ms, int):
            timeout += wait_ms / 1000.0
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            # The answers behind this one would be out of step: start afresh.
            if self._conn is conn:
                self._conn = None
            await conn.close()
            raise TimeoutError(f"digestd at {self.socket_path} did not answer "
                               f"{request.get('op')!r} within {timeout} s; raise the "
                               "client's timeout, or check `digestctl status`") from None

    async def hello(self) -> Json:
        return await self.request("hello")

    async def ping(self) -> bool:
        return bool((await self.request("ping")).get("pong"))

    async def status(self) -> Json:
        return await self.request("status")

    async def submit(self, kind: str, input: Optional[Mapping[str, Any]] = None, *,
                     key: Optional[str] = None, group: Optional[str] = None,
                     lane: Optional[str] = None, wait: Optional[float] = None,
                     replace: Optional[bool] = None, ttl: Optional[int] = None) -> Json:
        return await self.send(p.submit_request(kind, input, key, group, lane, wait, replace,
                                          ttl))

    async def submit_many(self, jobs: Iterable[Mapping[str, Any]], *,
                          group: Optional[str] = None, lane: Optional[str] = None) -> Json:
        return p.check_batch(await self.send(p.batch_request(jobs, group, lane)))

    async def result(self, key: Optional[str] = None, *, group: Optional[str] = None,
                     wait: Optional[float] = None) -> Json:
        fields = p.target(key, group, "result")
        wait_ms = p.seconds_to_ms(wait, "wait")
        if not wait_ms:
            return await self.request("result", **fields)
        deadline = time.monotonic() + wait_ms / 1000.0
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            view = await self.request("result", wait_ms=max(0, min(left, p.MAX_WAIT_MS)),
                                      **fields)
            if left <= p.MAX_WAIT_MS or p.is_terminal(view):
                return view

    def group(self, name: str) -> AsyncGroup:
        return AsyncGroup(self, name)

    async def cancel(self, key: Optional[str] = None, *, group: Optional[str] = None) -> Json:
        return await self.request("cancel", **p.target(key, group, "cancel"))

    async def retry(self, key: Optional[str] = None, *, group: Optional[str] = None,
                    lane: Optional[str] = None) -> Json:
        return await self.request("retry", lane=lane, **p.target(key, group, "retry"))

    async def delete(self, key: Optional[str] = None, *, group: Optional[str] = None) -> Json:
        return await self.request("delete", **p.target(key, group, "delete"))

    async def jobs(self, *, status: Union[str, Sequence[str], None] = None,
                   group: Optional[str] = None, kind: Optional[str] = None,
                   lane: Optional[str] = None, key_prefix: Optional[str] = None,
                   max_age_s: Optional[int] = None, min_age_s: Optional[int] = None,
                   limit: Optional[int] = None, cursor: Optional[str] = None) -> Json:
        return await self.send(p.jobs_request(status, group, kind, lane, key_prefix,
                                              max_age_s, min_age_s, limit, cursor))

    async def iter_jobs(self, **filters: Any) -> AsyncIterator[Json]:
        cursor = filters.pop("cursor", None)
        while True:
            page = await self.jobs(cursor=cursor, **filters)
            for job in page.get("jobs", []):
                yield job
            cursor = page.get("next")
            if not cursor:
                return

    async def workers(self, *, min: Optional[int] = None, max: Optional[int] = None,
                      reserved: Optional[int] = None) -> Json:
        return await self.request("workers", min=min, max=max, reserved=reserved)

    async def reload(self) -> Json:
        return await self.request("reload")

    async def drain(self) -> Json:
        return await self.request("drain")

    async def subscribe(self, *, key: Optional[str] = None, group: Optional[str] = None,
                        prefix: Optional[str] = None, lane: Optional[str] = None,
                        partial: bool = False,
                        timeout: Optional[float] = None) -> AsyncSubscription:
        reader, writer = await _open(self.socket_path)
        try:
            writer.write(p.encode(p.subscribe_request(key, group, prefix, lane, partial)))
            await writer.drain()
            line = await asyncio.wait_for(_read_line(reader, self.socket_path), self.timeout)
            answer = p.check(p.decode(line))
        except BaseException:
            writer.close()
            raise
        return AsyncSubscription(self.socket_path, reader, writer, answer, timeout)


__all__: List[str] = ["AsyncClient", "AsyncGroup", "AsyncSubscription"]
