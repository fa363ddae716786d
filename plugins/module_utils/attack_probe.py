# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attack probe: what a compromised component would try, one attempt at a time.

This file is also a standalone program (standard library only): the isolation_attack module
writes it to the host and runs it as `python3 attack_probe.py PLAN.json` inside a unit that has
the attacked component's exact confinement. Each attempt runs in a forked child, so an attempt
that succeeds (a new user namespace, a ptrace) cannot change the ones after it. The outcome of an
attempt is "OK" when the call succeeded, else the errno name the kernel returned (EPERM, EACCES,
ENOENT, ...), or one of the few words below for attempts that are not a single call:
"privileged"/"unprivileged" (a setuid-root program gained euid 0 or not), "timeout".
The output is one JSON object {attempt id: outcome} on stdout.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time

# x86_64 syscall numbers of the calls Python has no wrapper for (the targets are x86_64).
NR = {"ptrace": 101, "uname": 63, "sethostname": 170, "reboot": 169, "init_module": 175,
      "finit_module": 313, "kexec_load": 246, "keyctl": 250, "perf_event_open": 298,
      "bpf": 321, "io_uring_setup": 425, "unshare": 272, "mount": 165, "adjtimex": 159}

CLONE_FLAGS = {"user": 0x10000000, "net": 0x40000000, "mnt": 0x00020000}
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _name(code: int) -> str:
    return errno.errorcode.get(code, f"errno {code}")


def _syscall(name: str, *args) -> str:
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(NR[name]), *(ctypes.c_long(a) if isinstance(a, int) else a
                                                   for a in args))
    if ret == -1:
        return _name(ctypes.get_errno())
    if name in ("bpf", "perf_event_open", "io_uring_setup") and ret >= 0:
        os.close(ret)
    return "OK"


# ---- file system -------------------------------------------------------------------------

def open_read(path: str) -> str:
    with open(path, "rb") as handle:
        handle.read(1)
    return "OK"


def listdir(path: str) -> str:
    os.listdir(path)
    return "OK"


def create_file(path: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.unlink(path)
    return "OK"


def open_write(path: str) -> str:
    """Open an existing file for writing (nothing is written: the open is the violation)."""
    os.close(os.open(path, os.O_WRONLY))
    return "OK"


def unix_connect(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
    return "OK"


def unix_self(directory: str) -> str:
    """Control: a socket of our own in a directory of our own accepts our connection."""
    path = os.path.join(directory, f".kf-attack-{os.getpid()}.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        try:
            server.listen(1)
            return unix_connect(path)
        finally:
            os.unlink(path)


# ---- processes ---------------------------------------------------------------------------

def proc_exists(pid: int | str) -> str:
    os.stat(f"/proc/{pid if pid == 'self' else int(pid)}")
    return "OK"


def signal_pid(pid: int) -> str:
    os.kill(int(pid), 0)
    return "OK"


def ptrace_attach(pid: int) -> str:
    result = _syscall("ptrace", PTRACE_ATTACH, int(pid), 0, 0)
    if result == "OK":
        os.waitpid(int(pid), 0) if pid_is_child(int(pid)) else time.sleep(0.2)
        _syscall("ptrace", PTRACE_DETACH, int(pid), 0, 0)
    return result


def pid_is_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except OSError:
        return False


def ptrace_own_child() -> str:
    """PTRACE_ATTACH to a child of our own: what Yama scope 1 allows and seccomp must not."""
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        return ptrace_attach(child)
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def procfs_is_own() -> str:
    """OK when /proc belongs to another PID namespace than ours: host PIDs would show there."""
    if os.readlink("/proc/self") == str(os.getpid()):
        raise OSError(errno.ENOENT, "/proc is this PID namespace's own")
    return "OK"


# ---- kernel interfaces -------------------------------------------------------------------

def unshare(kind: str) -> str:
    return _syscall("unshare", CLONE_FLAGS[kind])


def mount_tmpfs() -> str:
    return _syscall("mount", ctypes.c_char_p(b"kf"), ctypes.c_char_p(b"/tmp"),
                    ctypes.c_char_p(b"tmpfs"), 0, ctypes.c_char_p(b""))


def init_module() -> str:
    image = ctypes.create_string_buffer(b"\x7fELF" + b"\0" * 60)
    return _syscall("init_module", image, 64, ctypes.c_char_p(b""))


def finit_module() -> str:
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        return _syscall("finit_module", fd, ctypes.c_char_p(b""), 0)
    finally:
        os.close(fd)


def bpf_map_create() -> str:
    # union bpf_attr for BPF_MAP_CREATE: map_type ARRAY, key 4 bytes, value 4 bytes, 1 entry.
    attr = ctypes.create_string_buffer(72)
    ctypes.memmove(attr, (ctypes.c_uint32 * 4)(2, 4, 4, 1), 16)
    return _syscall("bpf", 0, attr, 72)


def perf_event_open() -> str:
    # struct perf_event_attr (size 128): PERF_TYPE_SOFTWARE / PERF_COUNT_SW_TASK_CLOCK, self.
    attr = ctypes.create_string_buffer(128)
    ctypes.memmove(attr, (ctypes.c_uint32 * 2)(1, 128), 8)
    ctypes.memmove(ctypes.addressof(attr) + 8, (ctypes.c_uint64 * 1)(1), 8)
    return _syscall("perf_event_open", attr, 0, -1, -1, 0)


def keyctl() -> str:
    # KEYCTL_GET_KEYRING_ID of the session keyring, without creating one.
    return _syscall("keyctl", 0, -3, 0)


def kexec_load() -> str:
    return _syscall("kexec_load", 0, 0, None, 0)


def io_uring_setup() -> str:
    params = ctypes.create_string_buffer(120)
    return _syscall("io_uring_setup", 1, params)


def raw_socket() -> str:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    return "OK"


def packet_socket() -> str:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    return "OK"


def netlink_socket() -> str:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
    return "OK"


def inet6_socket() -> str:
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    return "OK"


def personality_exec() -> str:
    """Switch to READ_IMPLIES_EXEC: every readable mapping becomes executable."""
    _libc.personality.restype = ctypes.c_int
    if _libc.personality(ctypes.c_ulong(0x0400000)) == -1:
        return _name(ctypes.get_errno())
    return "OK"


def chmod_setuid(directory: str) -> str:
    """Plant a setuid file of its own (for a later execution by another user)."""
    path = os.path.join(directory, f".kf-attack-suid-{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        os.chmod(path, 0o4755)
    finally:
        os.unlink(path)
    return "OK"


def inet_socket() -> str:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    return "OK"


def bind_port(port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", int(port)))
    return "OK"


# The next three pass the privilege check only to fail on an invalid argument (EINVAL): an
# unconfined root would change nothing, and EINVAL means "let through".
def adjtimex_invalid() -> str:
    timex = ctypes.create_string_buffer(208)
    ctypes.memmove(timex, (ctypes.c_uint32 * 1)(0x4000), 4)  # ADJ_TICK, tick 0: invalid
    return _syscall("adjtimex", timex)


def sethostname_invalid() -> str:
    return _syscall("sethostname", ctypes.c_char_p(b"k" * 100), 100)


def reboot_invalid() -> str:
    return _syscall("reboot", 0, 0, 0, None)


def clock_settime_now() -> str:
    import time as _time
    _time.clock_settime(_time.CLOCK_REALTIME, _time.clock_gettime(_time.CLOCK_REALTIME))
    return "OK"


def mmap_wx() -> str:
    addr = _libc.mmap(None, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return _name(ctypes.get_errno())
    return "OK"


def mprotect_wx() -> str:
    addr = _libc.mmap(None, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return _name(ctypes.get_errno())
    if _libc.mprotect(addr, 4096, PROT_READ | PROT_WRITE | PROT_EXEC) != 0:
        return _name(ctypes.get_errno())
    return "OK"


def mmap_rw() -> str:
    addr = _libc.mmap(None, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return _name(ctypes.get_errno())
    return "OK"


def bad_pointer() -> str:
    """uname(2) handed an unmapped address: EFAULT proves the raw-call path reports errnos."""
    return _syscall("uname", 8)


def setuid_exec(path: str) -> str:
    """Start a setuid-root program and read its effective uid while it waits for a password."""
    proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{proc.pid}/status", encoding="ascii") as handle:
                    status = dict(line.split(":", 1) for line in handle if ":" in line)
            except OSError:
                status = {}
            # Wait until the program runs (not our forked copy before its execve). Its name,
            # not /proc/PID/exe: the exe link of a setuid process is not ours to read.
            if status.get("Name", "").strip() == os.path.basename(path)[:15]:
                return "privileged" if status["Uid"].split()[1] == "0" else "unprivileged"
            if proc.poll() is not None:
                return f"exited {proc.returncode}"
            time.sleep(0.05)
        return "timeout"
    finally:
        proc.kill()
        proc.wait()


# ---- network -----------------------------------------------------------------------------

def tcp_connect(host: str, port: int) -> str:
    socket.create_connection((host, int(port)), timeout=4).close()
    return "OK"


def udp_exchange(host: str, port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(4)
        sock.connect((host, int(port)))
        sock.send(b"kf")
        sock.recv(16)
    return "OK"


KINDS = {f.__name__: f for f in (
    open_read, listdir, create_file, open_write, unix_connect, unix_self, proc_exists,
    signal_pid, ptrace_attach, ptrace_own_child, procfs_is_own, unshare, mount_tmpfs,
    init_module, finit_module, bpf_map_create, perf_event_open, keyctl, kexec_load,
    io_uring_setup, raw_socket, packet_socket, netlink_socket, inet6_socket, personality_exec,
    chmod_setuid, inet_socket, bind_port, adjtimex_invalid,
    sethostname_invalid, reboot_invalid, clock_settime_now, mmap_wx, mprotect_wx, mmap_rw,
    bad_pointer, setuid_exec, tcp_connect, udp_exchange)}


def attempt(kind: str, args: list) -> str:
    """Run one attempt in the calling process; the outcome as a string (never raises)."""
    try:
        return KINDS[kind](*args)
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return _name(exc.errno) if exc.errno else f"{type(exc).__name__}: {exc}"


def attempt_in_child(kind: str, args: list, timeout: float = 30) -> str:
    """Run one attempt in a forked child so that its success cannot change later attempts."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        try:
            result = attempt(kind, args)
        except Exception as exc:  # noqa: BLE001 - a broken attempt is reported, not fatal
            result = f"probe error: {type(exc).__name__}: {exc}"
        os.write(write_end, result.encode()[:4000])
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and os.waitpid(child, os.WNOHANG) == (0, 0):
        time.sleep(0.02)
    try:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode(errors="replace")
    return out or "timeout"


def run_plan(plan: list[dict]) -> dict:
    return {item["id"]: attempt_in_child(item["kind"], item.get("args", [])) for item in plan}


def main(argv: list[str]) -> int:
    if platform.machine() != "x86_64":
        sys.stdout.write(json.dumps({"error": "the probe knows x86_64 syscall numbers only, "
                                              f"not {platform.machine()}"}) + "\n")
        return 2
    with open(argv[1], encoding="utf-8") as handle:
        plan = json.load(handle)
    identity = {"uid": os.getuid(), "euid": os.geteuid(), "pid": os.getpid()}
    sys.stdout.write(json.dumps({"identity": identity, "results": run_plan(plan)},
                                sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
