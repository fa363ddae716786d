"""Demo orchestrator: plans with the model backend, hands the job to the executor, signs the result.

The signing key arrives as a systemd credential ($CREDENTIALS_DIRECTORY/signing.key, an Ed25519
private key in PEM); no other component's user can read it.
"""

import base64
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kfdemo
from cryptography.hazmat.primitives import serialization

MODEL_SOCKET = os.environ.get("KF_MODEL_SOCKET", "/run/kernelfence/model_backend/model.sock")
EXECUTOR_SOCKET = os.environ.get("KF_EXECUTOR_SOCKET", "/run/kernelfence/executor/jobs.sock")
STATE_DIR = os.environ.get("STATE_DIRECTORY", "/var/lib/kernelfence/orchestrator")


def _signing_key():
    path = os.path.join(os.environ["CREDENTIALS_DIRECTORY"], "signing.key")
    with open(path, "rb") as handle:
        return serialization.load_pem_private_key(handle.read(), password=None)


def run(request: dict) -> dict:
    plan = kfdemo.ask(MODEL_SOCKET, {"prompt": request.get("goal", "audit dependencies")})
    result = kfdemo.ask(EXECUTOR_SOCKET, {"job": plan["answer"]})
    payload = json.dumps({"plan": plan, "result": result, "time": int(time.time())},
                         sort_keys=True).encode()
    signature = _signing_key().sign(payload)
    signed = {"payload": base64.b64encode(payload).decode(),
              "sha256": hashlib.sha256(payload).hexdigest(),
              "signature": base64.b64encode(signature).decode()}
    with open(os.path.join(STATE_DIR, "last-result.json"), "w") as handle:
        json.dump(signed, handle)
    return signed


if __name__ == "__main__":
    kfdemo.serve(run)
