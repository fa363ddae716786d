"""The loads of tests/vm/test_resources.py, run inside the executor's confinement (and, as the
control, in a plain unit). Standard library only: it is copied to the guest and run there.

    python3 resource_load.py KIND CAP SECONDS [PATH...]

Every load is bounded by CAP (MiB, tasks or descriptors) and by SECONDS, and ends by itself.
It prints one JSON line per step and a last line with the result; a load the kernel kills
(memory) is watched by a small parent that reports its own cgroup's memory.events.
"""

import contextlib
import errno
import json
import os
import resource
import signal
import sys
import time

MIB = 1024 * 1024


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def own_cgroup_file(name: str) -> str | None:
    """A file of this process's cgroup, read from /sys/fs/cgroup (None when unreadable)."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            path = handle.read().strip().split("::", 1)[1]
        with open(f"/sys/fs/cgroup{path}/{name}", encoding="utf-8") as handle:
            return handle.read()
    except (OSError, IndexError):
        return None


def memory(cap_mib: int, seconds: float) -> None:
    """A child allocates (every page written) in 16 MiB steps up to cap; the parent, which
    allocates nothing, reports how far it got and the cgroup's memory.events."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        held, deadline = [], time.monotonic() + seconds
        while len(held) * 16 < cap_mib and time.monotonic() < deadline:
            block = bytearray(16 * MIB)
            for offset in range(0, len(block), 4096):
                block[offset] = 1
            held.append(block)
            os.write(write_end, b"16\n")
        os._exit(0)
    os.close(write_end)
    reached = 0

    def report(*_args) -> None:
        events = dict(line.split() for line in (own_cgroup_file("memory.events") or "")
                      .splitlines() if line.strip())
        say(kind="memory", reached_mib=reached, cap_mib=cap_mib, child_status=status[0],
            memory_events={k: int(v) for k, v in events.items()},
            memory_max=(own_cgroup_file("memory.max") or "").strip())
        sys.exit(0)

    status = [None]
    signal.signal(signal.SIGTERM, report)  # OOMPolicy=stop: systemd stops the unit
    with os.fdopen(read_end) as progress:
        for line in progress:
            reached += int(line)
    _pid, code = os.waitpid(child, 0)
    status[0] = f"killed by signal {os.WTERMSIG(code)}" if os.WIFSIGNALED(code) else "exit"
    time.sleep(0.5)  # let the kernel's counters settle
    report()


def cpu(workers: int, seconds: float) -> None:
    """Busy processes until the deadline; each reports its loop count."""
    deadline = time.monotonic() + seconds
    children = []
    for _ in range(workers):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            count = 0
            while time.monotonic() < deadline:
                count += 1
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    say(kind="cpu", workers=len(children), seconds=seconds,
        cpu_stat=(own_cgroup_file("cpu.stat") or ""))


def tasks(cap: int, seconds: float) -> None:
    """Children that each sleep until the deadline, forked until refused or at cap."""
    deadline = time.monotonic() + seconds
    children, refused = [], None
    while len(children) < cap:
        try:
            pid = os.fork()
        except OSError as exc:
            refused = errno.errorcode.get(exc.errno, str(exc.errno))
            break
        if pid == 0:
            time.sleep(max(0.0, deadline - time.monotonic()))
            os._exit(0)
        children.append(pid)
    pids_max = (own_cgroup_file("pids.max") or "").strip()
    say(kind="tasks", forked=len(children), refused=refused, cap=cap, pids_max=pids_max)
    # Keep the pressure until the deadline: the test starts the orchestrator's job meanwhile.
    time.sleep(max(0.0, deadline - time.monotonic()))
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def files(cap: int, _seconds: float) -> None:
    """Descriptors opened until refused or at cap, after raising the soft limit to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    opened, refused = [], None
    while len(opened) < cap:
        try:
            opened.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            refused = errno.errorcode.get(exc.errno, str(exc.errno))
            break
    say(kind="files", opened=len(opened), refused=refused, cap=cap, soft=soft, hard=hard,
        highest=max(opened) if opened else None)
    for fd in opened:
        os.close(fd)


def disk(cap_mib: int, seconds: float, paths: list[str]) -> None:
    """Under each path, write 1 MiB blocks until refused or at cap, then delete the file."""
    block = os.urandom(MIB)
    results = {}
    for path in paths:
        name = os.path.join(path, f".kf-fill-{os.getpid()}")
        written, refused, deadline = 0, None, time.monotonic() + seconds
        try:
            with open(name, "wb", buffering=0) as handle:
                while written < cap_mib and time.monotonic() < deadline:
                    try:
                        written += handle.write(block) // MIB
                    except OSError as exc:
                        refused = errno.errorcode.get(exc.errno, str(exc.errno))
                        break
                if refused is None:
                    try:
                        os.fsync(handle.fileno())
                    except OSError as exc:
                        refused = errno.errorcode.get(exc.errno, str(exc.errno))
        except OSError as exc:
            refused = refused or f"open: {errno.errorcode.get(exc.errno, str(exc.errno))}"
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)
        results[path] = {"written_mib": written, "refused": refused}
    say(kind="disk", cap_mib=cap_mib, paths=results)


LOADS = {"memory": memory, "cpu": cpu, "tasks": tasks, "files": files}

if __name__ == "__main__":
    kind, cap, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    if kind == "disk":
        disk(cap, seconds, sys.argv[4:])
    else:
        LOADS[kind](cap, seconds)
