"""Disposable qemu guests: copy-on-write overlay, loopback-only SSH, restricted NIC.

Every start and wait is bounded. All state of an instance lives in one directory named after
it, so `down` (and a later run after an interrupted one) finds and removes the qemu process
and the overlay even when the pidfile was never written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .common import CACHE, HarnessError, log, run
from .image import ensure_image, ssh_keypair

INSTANCES = CACHE / "instances"
BOOT_TIMEOUT = float(os.environ.get("KF_BOOT_TIMEOUT", "420"))
SSH_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10"]


def _kvm_opens() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def accelerator(cpuinfo: str | None = None, kvm_opens=_kvm_opens) -> str:
    """KVM only where the CPU exposes vmx/svm and /dev/kvm opens: a stock kernel hangs otherwise."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    if flags & {"vmx", "svm"} and kvm_opens():
        return "kvm"
    return "tcg,thread=multi"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def instance_dir(name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise HarnessError(f"invalid instance name {name!r}")
    return INSTANCES / name


def _qemu_pids_for(path: Path) -> list[int]:
    """Every live qemu whose command line mentions this instance directory."""
    pids = []
    needle = str(path).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and needle in cmdline:
            pids.append(int(proc.name))
    return pids


def _console_tail(path: Path, lines: int = 25) -> str:
    try:
        text = (path / "console.log").read_text(errors="replace")
    except OSError:
        return "(no console output)"
    return "\n".join(text.splitlines()[-lines:])


def ssh_argv(info: dict, *command: str) -> list[str]:
    return ["ssh", *SSH_OPTS, "-i", info["identity_file"], "-p", str(info["port"]),
            f"{info['user']}@{info['address']}", *command]


def _wait_for_ssh(info: dict, path: Path, pid: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            raise HarnessError(f"qemu for {path.name} exited during boot; console:\n"
                               f"{_console_tail(path)}")
        if "Kernel panic" in _console_tail(path, 400):
            raise HarnessError(f"{path.name}: the guest kernel panicked; console:\n"
                               f"{_console_tail(path, 40)}")
        try:
            with socket.create_connection(("127.0.0.1", info["port"]), timeout=3) as sock:
                sock.settimeout(5)
                banner = sock.recv(64)
        except OSError:
            banner = b""
        if banner.startswith(b"SSH-"):
            try:
                probe = subprocess.run(ssh_argv(info, "true"), timeout=60, capture_output=True,
                                       check=False)
            except subprocess.TimeoutExpired:
                continue  # sshd is up but the guest is still busy booting: try again
            if probe.returncode == 0:
                return
        time.sleep(2)
    raise HarnessError(f"{path.name}: no SSH login within {BOOT_TIMEOUT:.0f}s; console:\n"
                       f"{_console_tail(path)}")


def up(name: str, distro: str, *, memory_mb: int = 2048, cpus: int = 2) -> dict:
    """Boot an instance (reusing a running one of the same name) and return its login data."""
    path = instance_dir(name)
    state = path / "instance.json"
    if state.exists() and _qemu_pids_for(path):
        info = json.loads(state.read_text())
        if info.get("distro") == distro:
            return info
    down(name)
    image = ensure_image(distro)
    path.mkdir(parents=True)
    try:
        return _boot(name, path, image, memory_mb, cpus)
    except BaseException:
        down(name)
        raise


def qemu_argv(name: str, path: Path, image, accel: str, port: int, memory_mb: int,
              cpus: int) -> list[str]:
    return [
        "qemu-system-x86_64", "-name", f"kf-{name}", "-machine", "q35",
        # la57=off: Debian 13's 6.12 kernel panics early in kmalloc under TCG with 5-level
        # paging, which "-cpu max" enables (seen here: RIP __kmalloc_noprof, CR4.LA57 set).
        "-accel", accel, "-cpu", "host" if accel == "kvm" else "max,la57=off",
        "-m", str(memory_mb), "-smp", str(cpus), "-nodefaults", "-display", "none",
        "-serial", f"file:{path / 'console.log'}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet",
        "-drive",
        f"file={path / 'overlay.qcow2'},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
        "-device", "virtio-rng-pci",
        # restrict=on: the guest reaches nothing outside itself; only the SSH forward comes in,
        # and it listens on the host's loopback alone.
        "-nic", f"user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-daemonize", "-pidfile", str(path / "qemu.pid"),
    ]


def _boot(name: str, path: Path, image, memory_mb: int, cpus: int) -> dict:
    overlay = path / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.disk),
         str(overlay)], timeout=60)
    key = ssh_keypair()
    accel = accelerator()
    for attempt in range(3):
        port = _free_port()
        argv = qemu_argv(name, path, image, accel, port, memory_mb, cpus)
        started = run(argv, timeout=60, check=False, capture=True)
        if started.returncode == 0:
            break
        if "hostfwd" not in (started.stderr or "") or attempt == 2:
            raise HarnessError(f"qemu failed to start {name}: {started.stderr.strip()}")
    pid = int((path / "qemu.pid").read_text().strip())
    info = {"instance": name, "address": "127.0.0.1", "port": port, "user": "root",
            "identity_file": str(key), "distro": image.distro.name,
            "systemd": image.distro.systemd, "pid": pid, "accel": accel,
            "image": image.path.name}
    log(f"booting {name} ({image.distro.name}, accel {accel}, ssh 127.0.0.1:{port})")
    began = time.monotonic()
    _wait_for_ssh(info, path, pid, began + BOOT_TIMEOUT)
    info["boot_seconds"] = round(time.monotonic() - began, 1)
    log(f"{name} reachable after {info['boot_seconds']}s")
    (path / "instance.json").write_text(json.dumps(info, indent=2))
    return info


def down(name: str) -> bool:
    """Stop the instance's qemu and delete its overlay; True when something was removed."""
    path = instance_dir(name)
    pids = _qemu_pids_for(path)
    for pid in pids:
        _terminate(pid)
    existed = path.exists()
    shutil.rmtree(path, ignore_errors=True)
    return existed or bool(pids)


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def down_all() -> list[str]:
    removed = []
    if INSTANCES.exists():
        for path in sorted(INSTANCES.iterdir()):
            if down(path.name):
                removed.append(path.name)
    return removed


def status() -> list[dict]:
    rows = []
    if INSTANCES.exists():
        for path in sorted(INSTANCES.iterdir()):
            state = path / "instance.json"
            info = json.loads(state.read_text()) if state.exists() else {"instance": path.name}
            info["running"] = bool(_qemu_pids_for(path))
            rows.append(info)
    return rows
