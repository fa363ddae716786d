"""Paths, logging and subprocess helpers shared by the lab/test harness."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KF_CACHE", Path.home() / ".cache" / "kernelfence"))


class HarnessError(RuntimeError):
    """An error the operator can act on; printed without a traceback."""


class StateError(HarnessError):
    """State on this machine that the command did not expect: what was found, and the fix.

    `./kf` prints it as one line (`kf: <found>`) and the command that clears it
    (`  fix: <command>`), changes nothing, and exits 1.
    """

    def __init__(self, found: str, fix: str) -> None:
        self.found = found
        self.fix = fix
        super().__init__(f"{found}\n  fix: {fix}")


def rerun_as_root() -> str:
    """The command line this process was started with, under sudo (the fix for 'not root')."""
    if Path(sys.argv[0]).name == "kf":
        return "sudo " + shlex.join(["./kf", *sys.argv[1:]])
    return "sudo " + shlex.join(["python3", *sys.argv])


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


def duration(seconds: float) -> str:
    """1m05s, 42s: the elapsed times the progress lines show."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Step:
    """A step of a long command, run in a thread of its own (`Progress.background`)."""

    def __init__(self, progress: Progress, name: str, func: Callable[[], object],
                 track: bool = True) -> None:
        self.name = name
        self._track = track
        self.result: object = None
        self.error: BaseException | None = None
        self._progress = progress
        self._func = func
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            with self._progress.step(self.name) if self._track else contextlib.nullcontext():
                self.result = self._func()
        except BaseException as exc:  # noqa: BLE001 (re-raised in the caller's thread by join)
            self.error = exc

    def start(self) -> Step:
        self._thread.start()
        return self

    def join(self) -> object:
        """Wait for the step; its exception is raised here, in the caller's thread."""
        if self._thread.is_alive():
            log(f"waiting for {self.name}")
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result


class Progress:
    """Which steps run and for how long: a line when each starts and ends, a ticker line every
    `interval` seconds while any runs (KF_TICK), and a closing table of the steps' times."""

    def __init__(self, interval: float | None = None) -> None:
        if interval is None:
            interval = float(os.environ.get("KF_TICK", "30") or 30)
        self.interval = interval
        self.began = time.monotonic()
        self.active: dict[str, float] = {}
        self.done: list[tuple[str, float, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if self.interval > 0:
            self._ticker = threading.Thread(target=self._tick, name="ticker", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            line = self.ticker_line()
            if line:
                log(line)

    def ticker_line(self) -> str:
        now = time.monotonic()
        with self._lock:
            running = [f"{name} ({duration(now - began)})" for name, began in self.active.items()]
        if not running:
            return ""
        return f"running: {', '.join(running)}; {duration(now - self.began)} since start"

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        with self._lock:
            self.active[name] = began
        log(f"step {name}: started")
        ok = False
        try:
            yield
            ok = True
        finally:
            seconds = time.monotonic() - began
            with self._lock:
                self.active.pop(name, None)
                self.done.append((name, seconds, ok))
            log(f"step {name}: {'done' if ok else 'FAILED'} in {duration(seconds)}")

    @contextlib.contextmanager
    def ticking(self, name: str) -> Iterator[None]:
        """Only the ticker line, for a step that logs its own start and result."""
        with self._lock:
            self.active[name] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self.active.pop(name, None)

    def background(self, name: str, func: Callable[[], object], track: bool = True) -> Step:
        """Run func in a thread; track=False when func reports its own steps."""
        return Step(self, name, func, track).start()

    def summary(self) -> str:
        lines = [f"  {duration(seconds):>7}  {'ok  ' if ok else 'FAIL'}  {name}"
                 for name, seconds, ok in self.done]
        total = duration(time.monotonic() - self.began)
        return "\n".join(["steps (they overlap; wall time is the total):", *lines,
                          f"  {total:>7}  total"])
