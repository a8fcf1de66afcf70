"""The blocking client: one connection, one request at a time."""

import select
import socket
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from . import _protocol as p
from .errors import ConnectionFailed, DigestdError

Json = Dict[str, Any]


class _Line:
    """A connected Unix socket read line by line."""

    def __init__(self, path: str, timeout: Optional[float]) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as e:
            self.sock.close()
            raise ConnectionFailed(
                f"cannot connect to digestd at {path}: {e.strerror or e}; start digestd, or "
                "pass its control socket (the socket= argument or $DIGESTD_SOCKET)") from None
        self.buf = b""

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ConnectionFailed(f"cannot send to digestd at {self.path}: {e}; "
                                   "the connection was lost, try again") from None

    def read_line(self, timeout: Optional[float]) -> bytes:
        self.sock.settimeout(timeout)
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1:]
                return line
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise
            except OSError as e:
                raise ConnectionFailed(f"cannot read from digestd at {self.path}: {e}; "
                                       "the connection was lost, try again") from None
            if not chunk:
                raise ConnectionFailed(
                    f"digestd at {self.path} closed the connection before answering "
                    "(it stopped, or it closes idle clients); try again")
            self.buf += chunk

    def closed_by_peer(self) -> bool:
        """True when digestd has closed this idle connection (EOF is waiting)."""
        if self.buf:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
            if not readable:
                return False
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Subscription:
    """An event stream: iterate it for one event dict per line.

    Made by :meth:`Client.subscribe`; it owns a connection of its own, which
    :meth:`close` (or leaving a ``with`` block) closes. Iteration ends when
    digestd closes the connection (it stopped); an app that needs the state
    of its jobs then reads them with ``result``. With ``timeout`` set,
    waiting longer than that for the next event raises TimeoutError (the
    stream stays usable).
    """

    def __init__(self, line: _Line, answer: Json, timeout: Optional[float]) -> None:
        self._line = line
        self.answer = answer
        self.timeout = timeout
        self.closed = False

    def __iter__(self) -> Iterator[Json]:
        return self

    def __next__(self) -> Json:
        if self.closed:
            raise StopIteration
        try:
            return p.decode(self._line.read_line(self.timeout))
        except ConnectionFailed:
            self.close()
            raise StopIteration from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line.close()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Group:
    """Jobs that share a group name: submit into it, read, wait for or cancel it.

    Made by :meth:`Client.group`; it holds no state beyond the name.
    """

    def __init__(self, client: "Client", name: str) -> None:
        self.client = client
        self.name = name

    def submit(self, kind: str, input: Optional[Mapping[str, Any]] = None, *,
               key: Optional[str] = None, lane: Optional[str] = None) -> Json:
        return self.client.submit(kind, input, key=key, group=self.name, lane=lane)

    def submit_many(self, jobs: Iterable[Mapping[str, Any]], *,
                    lane: Optional[str] = None) -> Json:
        return self.client.submit_many(jobs, group=self.name, lane=lane)

    def result(self, wait: Optional[float] = None) -> Json:
        return self.client.result(group=self.name, wait=wait)

    def cancel(self) -> Json:
        return self.client.cancel(group=self.name)

    def retry(self, lane: Optional[str] = None) -> Json:
        return self.client.retry(group=self.name, lane=lane)

    def delete(self) -> Json:
        return self.client.delete(group=self.name)

    def subscribe(self, *, partial: bool = False,
                  timeout: Optional[float] = None) -> Subscription:
        return self.client.subscribe(group=self.name, partial=partial, timeout=timeout)


class Client:
    """A blocking digestd client over one kept-open connection.

    ``socket`` is the control socket's path (default: $DIGESTD_SOCKET, else
    /run/digestd/control.sock). ``timeout`` bounds each request in seconds,
    on top of the wait it asks digestd for (None: no bound). Safe to share
    between threads: requests are sent one at a time. Every method returns
    the answer object (``ok`` true) and raises a :class:`DigestdError`
    subclass for an error answer.
    """

    def __init__(self, socket: Optional[str] = None, *, timeout: Optional[float] = 30.0) -> None:
        self.socket_path = p.socket_path(socket)
        self.timeout = timeout
        self._line: Optional[_Line] = None
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._line is not None:
                self._line.close()
                self._line = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, op: str, **fields: Any) -> Json:
        """Sends ``{"op": op, **fields}`` (None fields left out) and returns the answer."""
        req: Json = {"op": op}
        req.update(p.drop_none(fields))
        return self.send(req)

    def send(self, request: Mapping[str, Any]) -> Json:
        """Sends one request object and returns its answer; raises on ``ok: false``."""
        return p.check(self.send_raw(request))

    def send_raw(self, request: Mapping[str, Any]) -> Json:
        """Sends one request object and returns its answer as it came."""
        data = p.encode(request)
        wait_ms = request.get("wait_ms")
        timeout = self.timeout
        if timeout is not None and isinstance(wait_ms, int):
            timeout += wait_ms / 1000.0
        with self._lock:
            # digestd closes clients idle for [control] idle_timeout_s: a
            # connection it closed is replaced before anything is sent on it.
            if self._line is not None and self._line.closed_by_peer():
                self._line.close()
                self._line = None
            if self._line is None:
                self._line = _Line(self.socket_path, self.timeout)
            line = self._line
            try:
                line.send(data)
                raw = line.read_line(timeout)
            except socket.timeout:
                line.close()
                self._line = None
                raise TimeoutError(f"digestd at {self.socket_path} did not answer "
                                   f"{request.get('op')!r} within {timeout} s; raise the "
                                   "client's timeout, or check `digestctl status`") from None
            except DigestdError:
                line.close()
                self._line = None
                raise
        return p.decode(raw)

    # -- ops ---------------------------------------------------------------

    def hello(self) -> Json:
        """Protocol version, digestd's version, store, ``ops``, ``kinds``, ``features``."""
        return self.request("hello")

    def ping(self) -> bool:
        return bool(self.request("ping").get("pong"))

    def status(self) -> Json:
        return self.request("status")

    def submit(self, kind: str, input: Optional[Mapping[str, Any]] = None, *,
               key: Optional[str] = None, group: Optional[str] = None,
               lane: Optional[str] = None, wait: Optional[float] = None,
               replace: Optional[bool] = None, ttl: Optional[int] = None) -> Json:
        """Submits one job; answers ``key``, ``status``, ``existing``.

        With ``wait`` (seconds, at most 300) the job runs interactive and
        the answer is its job view once it ended or the wait ran out.
        """
        return self.send(p.submit_request(kind, input, key, group, lane, wait, replace,
                                          ttl))

    def submit_many(self, jobs: Iterable[Mapping[str, Any]], *, group: Optional[str] = None,
                    lane: Optional[str] = None) -> Json:
        """Submits a batch in one round trip (each job a dict with ``kind``, ...).

        ``group`` and ``lane`` apply to the jobs that name none. Answers
        ``jobs``, ``accepted`` and ``failed``: when ``failed`` > 0 the
        entries with ``error`` were not stored. Raises when none was.
        """
        return p.check_batch(self.send(p.batch_request(jobs, group, lane)))

    def result(self, key: Optional[str] = None, *, group: Optional[str] = None,
               wait: Optional[float] = None) -> Json:
        """The job view of ``key`` or the group view of ``group``.

        With ``wait`` (seconds) digestd answers once it is terminal, or when
        the wait ran out with the state it is in then; a wait longer than
        300 s is sent as several.
        """
        fields = p.target(key, group, "result")
        wait_ms = p.seconds_to_ms(wait, "wait")
        if not wait_ms:
            return self.request("result", **fields)
        deadline = time.monotonic() + wait_ms / 1000.0
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            view = self.request("result", wait_ms=max(0, min(left, p.MAX_WAIT_MS)), **fields)
            if left <= p.MAX_WAIT_MS or p.is_terminal(view):
                return view

    def group(self, name: str) -> Group:
        """A handle on the group ``name``."""
        return Group(self, name)

    def cancel(self, key: Optional[str] = None, *, group: Optional[str] = None) -> Json:
        return self.request("cancel", **p.target(key, group, "cancel"))

    def retry(self, key: Optional[str] = None, *, group: Optional[str] = None,
              lane: Optional[str] = None) -> Json:
        """Queues a failed or cancelled job (or every one of a group) again."""
        return self.request("retry", lane=lane, **p.target(key, group, "retry"))

    def delete(self, key: Optional[str] = None, *, group: Optional[str] = None) -> Json:
        """Deletes finished jobs; answers ``deleted`` and ``skipped``."""
        return self.request("delete", **p.target(key, group, "delete"))

    def jobs(self, *, status: Union[str, Sequence[str], None] = None,
             group: Optional[str] = None, kind: Optional[str] = None,
             lane: Optional[str] = None, key_prefix: Optional[str] = None,
             max_age_s: Optional[int] = None, min_age_s: Optional[int] = None,
             limit: Optional[int] = None, cursor: Optional[str] = None) -> Json:
        """One page of the job list, newest first: ``jobs``, and ``next`` when
        more follow (pass it back as ``cursor`` with the same filters)."""
        return self.send(p.jobs_request(status, group, kind, lane, key_prefix, max_age_s,
                                        min_age_s, limit, cursor))

    def iter_jobs(self, **filters: Any) -> Iterator[Json]:
        """Every job that :meth:`jobs` lists with these filters, page after page."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.jobs(cursor=cursor, **filters)
            for job in page.get("jobs", []):
                yield job
            cursor = page.get("next")
            if not cursor:
                return

    def workers(self, *, min: Optional[int] = None, max: Optional[int] = None,
                reserved: Optional[int] = None) -> Json:
        return self.request("workers", min=min, max=max, reserved=reserved)

    def reload(self) -> Json:
        return self.request("reload")

    def drain(self) -> Json:
        return self.request("drain")

    def subscribe(self, *, key: Optional[str] = None, group: Optional[str] = None,
                  prefix: Optional[str] = None, lane: Optional[str] = None,
                  partial: bool = False, timeout: Optional[float] = None) -> Subscription:
        """A stream of events on a connection of its own (filters combine).

        With ``partial`` the stream also carries ``text`` events with the
        text of summarize and generate jobs as it is written. Only jobs that
        start after the answer came are followed.
        """
        line = _Line(self.socket_path, self.timeout)
        try:
            line.send(p.encode(p.subscribe_request(key, group, prefix, lane, partial)))
            answer = p.check(p.decode(line.read_line(self.timeout)))
        except BaseException:
            line.close()
            raise
        return Subscription(line, answer, timeout)


def connect(socket: Optional[str] = None, *, timeout: Optional[float] = 30.0) -> Client:
    """A :class:`Client` that has checked that digestd answers ``hello``."""
    client = Client(socket, timeout=timeout)
    try:
        client.hello()
    except BaseException:
        client.close()
        raise
    return client


__all__: List[str] = ["Client", "Group", "Subscription", "connect"]
