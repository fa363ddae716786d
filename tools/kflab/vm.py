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
from dataclasses import dataclass
from pathlib import Path

from .common import CACHE, HarnessError, StateError, log, run
from .image import ensure_image, ssh_keypair

INSTANCES = CACHE / "instances"


def _boot_timeout() -> float:
    raw = os.environ.get("KF_BOOT_TIMEOUT", "420")
    try:
        return float(raw)
    except ValueError:
        raise HarnessError(f"KF_BOOT_TIMEOUT must be a number of seconds, not {raw!r}; "
                           "unset it or set e.g. KF_BOOT_TIMEOUT=600") from None


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
    raise HarnessError(f"{path.name}: no SSH login within {_boot_timeout():.0f}s; console:\n"
                       f"{_console_tail(path)}")


@dataclass
class Found:
    """What is on this machine under an instance's name: its folder, qemu and state file."""

    name: str
    path: Path
    exists: bool
    pids: list[int]
    info: dict | None
    state_problem: str | None  # why instance.json could not be used, when it exists

    @property
    def running(self) -> bool:
        return bool(self.pids) and self.info is not None

    def describe(self) -> str:
        """One line: what was found (empty when nothing is there)."""
        pids = ", ".join(map(str, self.pids))
        if self.running:
            info = self.info or {}
            return (f"instance {self.name!r} is up ({info.get('distro', '?')}, qemu pid {pids}, "
                    f"ssh -p {info.get('port', '?')} {info.get('user', 'root')}@"
                    f"{info.get('address', '127.0.0.1')})")
        if self.pids:
            why = self.state_problem or "no instance.json"
            return (f"a qemu (pid {pids}) is running for instance {self.name!r} without usable "
                    f"state ({why}): left by an interrupted run, or another ./kf is booting it")
        if self.exists:
            return (f"a stale folder of instance {self.name!r} at {self.path} (no qemu runs for "
                    "it: left by an interrupted or killed run)")
        return ""


def inspect(name: str) -> Found:
    """Read an instance's state without changing anything."""
    path = instance_dir(name)
    pids = _qemu_pids_for(path)
    info = problem = None
    state = path / "instance.json"
    if path.is_dir() and state.exists():
        try:
            info = json.loads(state.read_text())
            if not isinstance(info, dict) or "port" not in info:
                info, problem = None, f"{state} has no port"
        except (OSError, ValueError) as exc:
            problem = f"{state} unreadable: {exc}"
    elif path.exists() and not path.is_dir():
        problem = f"{path} is not a directory"
    return Found(name, path, path.exists() or path.is_symlink(), pids, info, problem)


def up(name: str, distro: str, *, memory_mb: int = 2048, cpus: int = 2,
       fix: str | None = None) -> dict:
    """Boot an instance (reusing a running one of the same name and distro), return its login
    data. Anything else under its name stops it with what was found and the command (`fix`,
    default `./kf vm down --name NAME`) that clears it, before any image is built."""
    fix = fix or f"./kf vm down --name {name}"
    _boot_timeout()  # a bad KF_BOOT_TIMEOUT stops here, not after the image build
    found = inspect(name)
    if found.running and (found.info or {}).get("distro") == distro:
        return found.info or {}
    if found.running:
        raise StateError(f"{found.describe()}, not {distro}", fix)
    if found.pids or found.exists:
        raise StateError(found.describe(), fix)
    image = ensure_image(distro)
    path = found.path
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
    _wait_for_ssh(info, path, pid, began + _boot_timeout())
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
    existed = path.exists() or path.is_symlink()
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif existed:
            path.unlink()
    except OSError as exc:
        raise StateError(f"cannot remove the folder of instance {name!r}: {exc}",
                         f"rm -rf {path}  # as the user that owns it") from exc
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
    if INSTANCES.is_dir():
        for path in sorted(INSTANCES.iterdir()):
            if not path.name.startswith(".") and down(path.name):
                removed.append(path.name)
    return removed


def status() -> list[dict]:
    rows = []
    if INSTANCES.is_dir():
        for path in sorted(INSTANCES.iterdir()):
            if path.name.startswith("."):
                continue
            found = inspect(path.name)
            row = dict(found.info or {"instance": path.name})
            row["running"] = bool(found.pids)
            if not found.running:
                row["problem"] = found.describe()
            rows.append(row)
    elif INSTANCES.exists():
        raise StateError(f"{INSTANCES} is not a directory (KF_CACHE={CACHE})",
                         f"rm {INSTANCES}  # or point KF_CACHE at another directory")
    return rows
