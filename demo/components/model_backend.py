"""Demo model backend: answers from a read-only data directory over its unix socket."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kfdemo

MODEL_DIR = os.environ.get("KF_MODEL_DIR", "/srv/kernelfence/model")


def answer(request: dict) -> dict:
    with open(os.path.join(MODEL_DIR, "answers.json")) as handle:
        answers = json.load(handle)
    return {"answer": answers.get(request.get("prompt"), answers["default"])}


if __name__ == "__main__":
    kfdemo.serve(answer)
