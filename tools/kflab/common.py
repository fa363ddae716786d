"""Paths, logging and subprocess helpers shared by the lab/test harness."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KF_CACHE", Path.home() / ".cache" / "kernelfence"))


class HarnessError(RuntimeError):
    """An error the operator can act on; printed without a traceback."""


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[kf {stamp}] {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], *, timeout: float | None = None, check: bool = True,
        capture: bool = False, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run argv with a bound; a timeout or failure becomes a HarnessError naming the command."""
    try:
        proc = subprocess.run(argv, timeout=timeout, text=True, env=env, cwd=cwd, check=False,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.PIPE if capture else None)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"timed out after {timeout:.0f}s: {shlex.join(argv)}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip()[-2000:] if capture else ""
        raise HarnessError(f"exit {proc.returncode}: {shlex.join(argv)}\n{detail}".rstrip())
    return proc


def sha256_of(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()
