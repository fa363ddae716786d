"""Demo model backend: answers from a read-only data directory over its unix socket.

KF_MODEL_RESIDENT_MIB=N holds N MiB resident from start to stop, standing for the weights a
real backend keeps in memory; a request {"work": N} does a fixed amount of CPU work (N rounds
of SHA-256) so that its time measures the CPU the backend gets (tests/vm/test_resources.py).
"""

import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kfdemo

MODEL_DIR = os.environ.get("KF_MODEL_DIR", "/srv/kernelfence/model")
PAGE = 4096


def hold_resident(mib: int) -> bytearray:
    """N MiB with every page written, so that they are resident, not just reserved."""
    weights = bytearray(mib * 1024 * 1024)
    for offset in range(0, len(weights), PAGE):
        weights[offset] = 1
    return weights


WEIGHTS = hold_resident(int(os.environ.get("KF_MODEL_RESIDENT_MIB", "0")))


def answer(request: dict) -> dict:
    if "work" in request:
        digest = b"kernelfence"
        for _ in range(min(int(request["work"]), 10_000_000)):
            digest = hashlib.sha256(digest).digest()
        return {"answer": digest.hex(), "resident_mib": len(WEIGHTS) // (1024 * 1024)}
    with open(os.path.join(MODEL_DIR, "answers.json")) as handle:
        answers = json.load(handle)
    return {"answer": answers.get(request.get("prompt"), answers["default"])}


if __name__ == "__main__":
    kfdemo.serve(answer)
