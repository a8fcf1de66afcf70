#!/usr/bin/env python3
"""A word game that precomputes its LLM work when a game is created.

A game shows two words; the player guesses the word that links them. When
the game is created, the app submits, as one group in one round trip, the
embeddings of the two words and of a sample of other words, the model's own
answer, and a similarity part that needs the embeddings ("after"): once they
are done, digestd's pool works out how related the two words are compared
with the sample, so the vectors never pass through the app. All of it on
the background lane; nobody waits for it then. When the player guesses, the
app waits for the group (which moves anything still queued to the
interactive lane), embeds the guess in a synchronous submit, and scores it.

    python3 word_game.py [WORD1 WORD2 GUESS]   (default: lighthouse ledger keeper)

The socket is $DIGESTD_SOCKET, else /run/digestd/control.sock. Exits 1 when
the precomputed work did not complete.
"""

import math
import os
import sys
import time
import uuid
from typing import List, Sequence

try:
    import digestd_client  # noqa: F401
except ImportError:  # run from a checkout: the package is beside this folder
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from digestd_client import Client, DigestdError


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


# Words the pair is compared with: how related would two words picked at
# random be?
SAMPLE = ["river", "stone", "lantern", "orchard", "violin", "cloud", "ticket", "garden"]


def create_game(client: Client, words: List[str]) -> str:
    game = f"game:{uuid.uuid4().hex[:8]}"
    answer = client.group(game).submit_many([
        {"kind": "embed", "key": f"{game}/embed", "input": {"texts": words}},
        {"kind": "embed", "key": f"{game}/sample", "input": {"texts": SAMPLE}},
        {"kind": "similarity", "key": f"{game}/pair", "after": [f"{game}/embed", f"{game}/sample"],
         "input": {"a": {"part": f"{game}/embed", "index": 0},
                   "b": {"part": f"{game}/embed", "index": 1},
                   "sample": {"part": f"{game}/sample"}}},
        {"kind": "generate", "key": f"{game}/answer",
         "input": {"prompt": f"Which one word links '{words[0]}' and '{words[1]}'? "
                             "Answer with the word alone."}},
    ], lane="background")
    if answer["failed"]:
        raise SystemExit(f"word_game: {answer['failed']} of the game's jobs were not stored: "
                         f"{answer['jobs']}; create the game again")
    return game


def main() -> int:
    args = sys.argv[1:]
    if args and len(args) != 3:
        print("usage: word_game.py [WORD1 WORD2 GUESS]", file=sys.stderr)
        return 2
    w1, w2, guess = args or ["lighthouse", "ledger", "keeper"]
    with Client() as client:
        start = time.monotonic()
        game = create_game(client, [w1, w2])
        print(f"created {game}: link '{w1}' and '{w2}' "
              f"(precompute handed over in {1000 * (time.monotonic() - start):.1f} ms)")

        time.sleep(0.2)  # the player thinks
        print(f"the player guesses '{guess}'")
        start = time.monotonic()
        view = client.group(game).result(wait=60)
        waited = 1000 * (time.monotonic() - start)
        print(f"precomputed work: {view['status']}, {view['ready']} of {view['total']} ready "
              f"after waiting {waited:.0f} ms at the guess")
        if view["status"] != "completed":
            errors = [f"{p['key']}: {p['status']} {p.get('error', '')}" for p in view["parts"]]
            print("word_game: the game's precompute did not complete: " + "; ".join(errors),
                  file=sys.stderr)
            return 1
        parts = {p["key"]: p["result"] for p in view["parts"]}
        vectors = parts[f"{game}/embed"]["embeddings"]
        model_answer = parts[f"{game}/answer"]["text"].strip()

        g = client.submit("embed", {"texts": [guess]}, key=f"{game}/guess", wait=30)
        if g["status"] != "done":
            print(f"word_game: embedding the guess ended {g['status']}: {g.get('error', '')}",
                  file=sys.stderr)
            return 1
        gv = g["result"]["embeddings"][0]
        if not (len(vectors) == 2 and len(gv) == len(vectors[0]) == len(vectors[1])):
            print("word_game: the embeddings do not have one vector per word of one length",
                  file=sys.stderr)
            return 1
        score = (cosine(gv, vectors[0]) + cosine(gv, vectors[1])) / 2
        pair = parts[f"{game}/pair"]
        print(f"similarity of '{w1}' and '{w2}': {pair['similarity']:+.3f}, closer than "
              f"{pair['percentile']:.0f}% of {pair['null']['n']} sample words are to '{w1}' "
              f"(computed in digestd once the embeddings were done)")
        print(f"the guess scores {score:+.3f} ({g['result']['dims']} dimensions)")
        print(f"the model's own answer: {model_answer[:80]!r}")
    print("word_game: game created, precomputed and scored")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DigestdError, TimeoutError) as e:
        print(f"word_game: {e}", file=sys.stderr)
        sys.exit(1)
