"""Real qemu: a failed or interrupted boot, then `kf vm down`, leave no qemu and no overlay.

These boot the cached Debian 12 image under the real accelerator choice; each takes seconds
because it stops the guest long before it finishes booting.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KF = [sys.executable, str(REPO / "kf")]
CACHE = Path(os.environ.get("KF_CACHE", Path.home() / ".cache" / "kernelfence"))


def qemu_pids(name):
    # Deliberately not vm._qemu_pids_for: the check must not share the code it checks.
    needle = str(CACHE / "instances" / name).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmdline and needle in cmdline:
                pids.append(int(proc.name))
    return pids


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def name(request):
    instance = f"harness-{request.node.name[:20].replace('_', '-')}-{os.getpid()}"
    yield instance
    subprocess.run([*KF, "vm", "down", "--name", instance], check=False, capture_output=True)


def test_failed_boot_removes_qemu_and_overlay(name):
    env = dict(os.environ, KF_BOOT_TIMEOUT="3")
    proc = subprocess.run([*KF, "vm", "up", "--name", name, "--distro", "debian12"], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert "no SSH login within 3s" in proc.stderr
    assert qemu_pids(name) == []
    assert not (CACHE / "instances" / name).exists()


def test_interrupted_boot_then_down_leaves_nothing(name):
    proc = subprocess.Popen([*KF, "vm", "up", "--name", name, "--distro", "debian12"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    overlay = CACHE / "instances" / name / "overlay.qcow2"
    # Control: the boot really got as far as a running qemu with its overlay.
    assert wait_for(lambda: qemu_pids(name) and overlay.exists(), 120), "qemu never started"
    proc.send_signal(signal.SIGKILL)  # the harshest interruption: no cleanup code runs
    proc.wait(timeout=30)
    assert qemu_pids(name), "qemu is daemonized and survives its parent; down must find it"
    down = subprocess.run([*KF, "vm", "down", "--name", name], capture_output=True, text=True,
                          timeout=120, check=True)
    assert json.loads(down.stdout) == {"removed": [name]}
    assert wait_for(lambda: not qemu_pids(name), 20)
    assert not (CACHE / "instances" / name).exists()
