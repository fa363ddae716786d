#!/usr/bin/env python3
"""Record a /proc tree of processes with known isolation, for tests/unit/test_proc_isolation.py.

Run as root on a Linux host: `python3 tools/record_proc_fixtures.py tests/unit/fixtures/proc`.
It re-executes itself as PID 1 of a new PID namespace with its own /proc (so PID 1's namespaces
are readable even inside a container), starts one process per scenario, copies the files the
reader uses, then stops every process it started. Links become regular files holding the link
text; the executable's sha256 and `security.capability` xattr are recorded beside `exe`.

Scenarios (role -> what the kernel shows):
  init       PID 1 of the namespace (this recorder)
  ambient    uid/gid 65534, CAP_NET_BIND_SERVICE inheritable+permitted+effective+ambient
  filecaps   a copy of sleep with file capability cap_net_raw+ep, run as uid 65534
  threads    python: one thread drops CAP_SYS_ADMIN from its bounding set and CAP_KILL from its
             effective set; the main thread keeps them
  seccomp    python: NoNewPrivs set, two allow-all seccomp filters installed
  netns      sleep in a private network and UTS namespace
  vanished   a process killed while it was being recorded: status copied, the rest gone
  oldkernel  derived from seccomp: Seccomp_filters lines and ns/time removed, as a kernel
             older than 5.6/5.9 shows it
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

THREADS = r"""
import ctypes, threading, time, struct
libc = ctypes.CDLL(None, use_errno=True)
def drop():
    assert libc.prctl(24, 21, 0, 0, 0) == 0          # PR_CAPBSET_DROP CAP_SYS_ADMIN
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)       # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()
    assert libc.syscall(125, hdr, data) == 0         # capget
    data[0] &= ~(1 << 5)                             # effective: drop CAP_KILL
    assert libc.syscall(126, hdr, data) == 0         # capset
    time.sleep(600)
threading.Thread(target=drop, name="dropper", daemon=True).start()
time.sleep(600)
"""

SECCOMP = r"""
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0               # PR_SET_NO_NEW_PRIVS
class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]
allow = (Filter * 1)(Filter(0x06, 0, 0, 0x7fff0000))  # BPF_RET|BPF_K SECCOMP_RET_ALLOW
prog = Prog(1, allow)
for _ in range(2):
    assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0   # PR_SET_SECCOMP FILTER
time.sleep(600)
"""


def copy_process(pid: int, dest: str, stop_after_status: subprocess.Popen | None = None) -> None:
    src = f"/proc/{pid}"
    os.makedirs(dest)
    shutil.copyfile(f"{src}/status", f"{dest}/status")
    if stop_after_status is not None:
        stop_after_status.kill()
        stop_after_status.wait()
    with contextlib.suppress(FileNotFoundError):
        shutil.copyfile(f"{src}/cgroup", f"{dest}/cgroup")
    try:
        tids = os.listdir(f"{src}/task")
    except FileNotFoundError:
        tids = []
    for tid in tids:
        os.makedirs(f"{dest}/task/{tid}")
        shutil.copyfile(f"{src}/task/{tid}/status", f"{dest}/task/{tid}/status")
    if os.path.isdir(f"{src}/ns"):
        os.makedirs(f"{dest}/ns")
        for name in os.listdir(f"{src}/ns"):
            if name.endswith("_for_children"):
                continue
            with open(f"{dest}/ns/{name}", "w") as out:
                out.write(os.readlink(f"{src}/ns/{name}") + "\n")
    try:
        target = os.readlink(f"{src}/exe")
    except FileNotFoundError:
        return
    with open(f"{dest}/exe", "w") as out:
        out.write(target + "\n")
    with open(f"{src}/exe", "rb") as binary, open(f"{dest}/exe.sha256", "w") as out:
        out.write(hashlib.sha256(binary.read()).hexdigest() + "\n")
    try:
        raw = os.getxattr(f"{src}/exe", "security.capability")
    except OSError:
        return
    with open(f"{dest}/exe.security.capability", "wb") as out:
        out.write(raw)


def derive_old_kernel(src: str, dest: str) -> None:
    shutil.copytree(src, dest)
    os.rename(os.path.join(dest, "task", os.path.basename(src)),
              os.path.join(dest, "task", os.path.basename(dest)))
    for dirpath, _dirs, files in os.walk(dest):
        if "status" in files:
            path = os.path.join(dirpath, "status")
            with open(path) as handle:
                lines = [ln for ln in handle if not ln.startswith("Seccomp_filters:")]
            with open(path, "w") as handle:
                handle.writelines(lines)
    os.remove(os.path.join(dest, "ns", "time"))


def record(out: str) -> None:
    work = tempfile.mkdtemp(prefix="kf-record-")
    capsleep = os.path.join(work, "capsleep")
    shutil.copyfile("/usr/bin/sleep", capsleep)
    os.chmod(capsleep, 0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", capsleep], check=True)
    drop_to_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    started = {
        "ambient": subprocess.Popen([*drop_to_nobody, "--inh-caps", "+net_bind_service",
                                     "--ambient-caps", "+net_bind_service", "sleep", "600"]),
        "filecaps": subprocess.Popen([*drop_to_nobody, capsleep, "600"]),
        "threads": subprocess.Popen([sys.executable, "-c", THREADS]),
        "seccomp": subprocess.Popen([sys.executable, "-c", SECCOMP]),
        "netns": subprocess.Popen(["unshare", "--net", "--uts", "sleep", "600"]),
        "vanished": subprocess.Popen(["sleep", "600"]),
    }
    try:
        time.sleep(1.0)
        tree = os.path.join(out, "tree")
        shutil.rmtree(tree, ignore_errors=True)
        roles = {"init": 1, **{role: proc.pid for role, proc in started.items()}}
        # unshare forks: record its child, the sleep itself.
        netns_pid = started["netns"].pid
        with open(f"/proc/{netns_pid}/task/{netns_pid}/children") as handle:
            netns_children = handle.read().split()
        if netns_children:
            roles["netns"] = int(netns_children[0])
        for role, pid in roles.items():
            copy_process(pid, os.path.join(tree, str(pid)),
                         started["vanished"] if role == "vanished" else None)
        # The kernel's highest capability: what a full capability set is (compact scans).
        os.makedirs(os.path.join(tree, "sys/kernel"), exist_ok=True)
        shutil.copyfile("/proc/sys/kernel/cap_last_cap",
                        os.path.join(tree, "sys/kernel/cap_last_cap"))
        roles["oldkernel"] = 9000 + roles["seccomp"]
        derive_old_kernel(os.path.join(tree, str(roles["seccomp"])),
                          os.path.join(tree, str(roles["oldkernel"])))
        with open(os.path.join(out, "roles.json"), "w") as handle:
            json.dump({"kernel": os.uname().release, "roles": roles}, handle, indent=1)
            handle.write("\n")
    finally:
        for proc in started.values():
            proc.kill()
            proc.wait()
        shutil.rmtree(work)


def main() -> None:
    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "tests/unit/fixtures/proc")
    if os.getpid() != 1:
        sys.exit(subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                                 os.path.abspath(__file__), out]).returncode)
    record(out)


if __name__ == "__main__":
    main()
