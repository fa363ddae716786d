"""Demo tool executor: runs the job it is handed (a real `cargo audit`, or a connection to the
advisory mirror) and returns the report."""

import errno
import json
import os
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kfdemo

# Installed by the verified_binary role only after its cosign signature verified.
CARGO_AUDIT = os.environ.get("KF_CARGO_AUDIT",
                             "/opt/kernelfence/bin/executor/cargo-audit/current/cargo-audit")
WORKSPACE = os.environ.get("KF_WORKSPACE", "/srv/kernelfence/executor")


# The advisory-database mirror the executor may reach (its network.egress in the model).
MIRROR = os.environ.get("KF_MIRROR", "127.0.0.1:8088")


def reach_mirror() -> dict:
    """Open a TCP connection to the mirror: what an advisory-database update needs first."""
    host, _, port = MIRROR.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10):
            return {"mirror": MIRROR}
    except OSError as exc:
        return {"error": f"mirror {MIRROR}: {errno.errorcode.get(exc.errno, exc)}"}


def run_job(request: dict) -> dict:
    if request.get("job") == "mirror":
        return reach_mirror()
    if request.get("job") != "cargo-audit":
        return {"error": f"unknown job {request.get('job')!r}"}
    argv = [CARGO_AUDIT, "audit", "--db", os.path.join(WORKSPACE, "advisory-db"), "--no-fetch",
            "--json", "--file", os.path.join(WORKSPACE, "Cargo.lock")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return {"error": "cargo audit gave no report", "rc": proc.returncode,
                "stderr": proc.stderr[-2000:]}
    return {"rc": proc.returncode, "report": report}


if __name__ == "__main__":
    kfdemo.serve(run_job)
