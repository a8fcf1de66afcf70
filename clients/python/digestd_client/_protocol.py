"""Building requests and reading answers: shared by Client and AsyncClient."""

import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .errors import DigestdError, error_from_answer

DEFAULT_SOCKET = "/run/digestd/control.sock"

#: Longest wait one request may carry (docs/protocol.md: wait_ms 0 to 300000).
MAX_WAIT_MS = 300_000

JOB_TERMINAL = frozenset({"done", "failed", "cancelled"})
GROUP_TERMINAL = frozenset({"completed", "failed", "partial"})

Json = Dict[str, Any]


def socket_path(path: Optional[str]) -> str:
    """``path``, else $DIGESTD_SOCKET, else the shipped default, as digestctl does."""
    if path:
        return path
    env = os.environ.get("DIGESTD_SOCKET")
    return env if env else DEFAULT_SOCKET


def encode(request: Mapping[str, Any]) -> bytes:
    # ensure_ascii keeps the line valid UTF-8 whatever the input holds.
    return (json.dumps(request, separators=(",", ":")) + "\n").encode("ascii")


def decode(line: bytes) -> Json:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DigestdError(f"digestd sent a line that is not JSON ({e}): {line[:200]!r}; "
                           "check that the socket path names digestd's control socket",
                           "io_error") from None
    if not isinstance(value, dict):
        raise DigestdError(f"digestd sent a line that is not a JSON object: {line[:200]!r}; "
                           "check that the socket path names digestd's control socket",
                           "io_error")
    return value


def check(answer: Json) -> Json:
    """The answer when ``ok`` is true; raises the error's exception otherwise."""
    if answer.get("ok") is True:
        return answer
    raise error_from_answer(answer)


def drop_none(fields: Mapping[str, Any]) -> Json:
    return {k: v for k, v in fields.items() if v is not None}


def seconds_to_ms(seconds: Optional[float], name: str) -> Optional[int]:
    if seconds is None:
        return None
    if seconds < 0:
        raise ValueError(f"{name} must be 0 or more seconds, not {seconds}")
    return int(round(seconds * 1000))


def job_fields(kind: str, input: Optional[Mapping[str, Any]], key: Optional[str],
               group: Optional[str], lane: Optional[str],
               replace: Optional[bool], ttl: Optional[int] = None) -> Json:
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string such as \"summarize\"; "
                         "hello() lists the kinds this digestd runs")
    fields: Json = {"kind": kind}
    if input is not None:
        fields["input"] = dict(input)
    fields.update(drop_none({"key": key, "group": group, "lane": lane,
                             "replace": True if replace else None}))
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
            raise ValueError(f"ttl must be a whole number of seconds, 0 or more, not {ttl!r}")
        fields["ttl_s"] = ttl
    return fields


def submit_request(kind: str, input: Optional[Mapping[str, Any]], key: Optional[str],
                   group: Optional[str], lane: Optional[str], wait: Optional[float],
                   replace: Optional[bool], ttl: Optional[int] = None) -> Json:
    req: Json = {"op": "submit"}
    req.update(job_fields(kind, input, key, group, lane, replace, ttl))
    wait_ms = seconds_to_ms(wait, "wait")
    if wait_ms is not None:
        if wait_ms > MAX_WAIT_MS:
            raise ValueError(f"wait is at most {MAX_WAIT_MS // 1000} seconds for a submit, "
                             f"not {wait}; submit without wait and call result(wait=...)")
        req["wait_ms"] = wait_ms
    return req


def batch_request(jobs: Iterable[Mapping[str, Any]], group: Optional[str],
                  lane: Optional[str]) -> Json:
    out: List[Json] = []
    for i, job in enumerate(jobs):
        if not isinstance(job, Mapping):
            raise ValueError(f"jobs[{i}] must be a dict with at least \"kind\", not {job!r}")
        j = dict(job)
        if group is not None:
            j.setdefault("group", group)
        if lane is not None:
            j.setdefault("lane", lane)
        out.append(j)
    if not out:
        raise ValueError("submit_many needs at least one job")
    return {"op": "submit", "jobs": out}


def check_batch(answer: Json) -> Json:
    """A batch answer: raised when nothing was accepted, returned otherwise.

    A batch where only some jobs were stored is returned (``failed`` > 0,
    each failed entry has ``error``); the caller resubmits those.
    """
    return check(answer)


def target(key: Optional[str], group: Optional[str], op: str) -> Json:
    if (key is None) == (group is None):
        raise ValueError(f"{op} needs exactly one of key and group")
    return {"key": key} if key is not None else {"group": group}


def is_terminal(view: Json) -> bool:
    if "parts" in view or ("group" in view and "total" in view):
        return view.get("status") in GROUP_TERMINAL
    return view.get("status") in JOB_TERMINAL


def subscribe_request(key: Optional[str], group: Optional[str], prefix: Optional[str],
                      lane: Optional[str], partial: bool) -> Json:
    req: Json = {"op": "subscribe"}
    req.update(drop_none({"key": key, "group": group, "prefix": prefix, "lane": lane}))
    if partial:
        req["partial"] = True
    return req


def jobs_request(status: Union[str, Sequence[str], None], group: Optional[str],
                 kind: Optional[str], lane: Optional[str], key_prefix: Optional[str],
                 max_age_s: Optional[int], min_age_s: Optional[int], limit: Optional[int],
                 cursor: Optional[str]) -> Json:
    req: Json = {"op": "jobs"}
    if status is not None and not isinstance(status, str):
        status = list(status)
    req.update(drop_none({"status": status, "group": group, "kind": kind, "lane": lane,
                          "key_prefix": key_prefix, "max_age_s": max_age_s,
                          "min_age_s": min_age_s, "limit": limit, "cursor": cursor}))
    return req
