#!/usr/bin/env python3
"""A book reader that summarises each chapter as it is read.

The reader opens a book; each time a chapter is finished, the app hands it
to digestd (background lane, the story so far as context) and shows the
summary being written, from the stream of partial text. At the end it
reads the whole group back: one summary per chapter.

    python3 book_reader.py [BOOK]      (default: samples/the-keepers-ledger.txt)

The socket is $DIGESTD_SOCKET, else /run/digestd/control.sock. Exits 1 when
a summary did not arrive, or never showed as it was written.
"""

import os
import re
import sys
import textwrap
import uuid

try:
    import digestd_client  # noqa: F401
except ImportError:  # run from a checkout: the package is beside this folder
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from digestd_client import Client, DigestdError

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BOOK = os.path.join(HERE, "..", "..", "..", "samples", "the-keepers-ledger.txt")


def chapters(path: str):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    parts = re.split(r"^(CHAPTER \d+\. .*)$", text, flags=re.M)
    return [(parts[i].strip(), parts[i + 1].strip()) for i in range(1, len(parts), 2)]


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_BOOK
    book = chapters(path)
    if not book:
        print(f"book_reader: no 'CHAPTER N. Title' lines in {path}; give a book in that form",
              file=sys.stderr)
        return 1
    group = f"book:{uuid.uuid4().hex[:8]}"
    print(f"reading {os.path.basename(path)}: {len(book)} chapters, summaries in group {group}")
    problems = []
    with Client() as client, client.subscribe(group=group, partial=True, timeout=60) as events:
        so_far = ""
        for n, (title, body) in enumerate(book, 1):
            key = f"{group}/ch:{n}"
            # The reader has just finished this chapter: hand it over and read on.
            client.submit("summarize", {"title": title, "text": body,
                                        "context": so_far[-6000:], "max_words": 60},
                          key=key, group=group, lane="background")
            so_far += f"{title}\n{body}\n\n"
            print(f"\n{title} read; its summary is being written:")
            updates = 0
            for ev in events:
                if ev.get("key") != key:
                    continue
                if ev["event"] == "text":
                    updates += 1
                    print("  ... " + textwrap.shorten(ev["text"], 90, placeholder=" …"))
                elif ev["state"] in ("done", "failed", "cancelled"):
                    print(f"  {ev['state']} after {ev.get('run_ms', 0):.0f} ms, "
                          f"{updates} partial updates")
                    if ev["state"] != "done":
                        problems.append(f"{key} ended {ev['state']}: {ev.get('error', '')}")
                    elif updates == 0:
                        problems.append(f"{key}: no partial text arrived")
                    break
            else:
                problems.append(f"{key}: the event stream ended before the job did")
                break
        view = client.result(group=group, wait=60)
    print(f"\nthe book's summaries ({view['status']}, {view['ready']} of {view['total']}):")
    for part in view["parts"]:
        summary = part.get("result", {}).get("summary", "")
        print(f"\n{part['key']}:")
        print(textwrap.fill(summary or part.get("error", "(none)"), 78,
                            initial_indent="    ", subsequent_indent="    "))
        if part["status"] != "done" or not summary:
            problems.append(f"{part['key']} is {part['status']} without a summary")
    if view["status"] != "completed" or view["total"] != len(book):
        problems.append(f"group {group} is {view['status']} with {view['total']} parts, "
                        f"expected completed with {len(book)}")
    if problems:
        print("\nbook_reader: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("\nbook_reader: every chapter summarised")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DigestdError, TimeoutError) as e:
        print(f"book_reader: {e}", file=sys.stderr)
        sys.exit(1)
