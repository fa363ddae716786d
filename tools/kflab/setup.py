"""Install what the lab and the tests need, from Debian, PyPI, crates.io and the Go proxy only.

Everything lands under the cache directory keyed by its pin, so a warm machine reuses it and
a changed pin installs the new version beside nothing stale.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .common import CACHE, REPO, HarnessError, log, run, sha256_of

# Host commands and the Debian packages that provide them.
APT_COMMANDS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "nft": "nftables",
    "bwrap": "bubblewrap",
    "pscap": "libcap-ng-utils",
    "systemd-analyze": "systemd",
    "git": "git",
    # Controller only: tests/unit/test_audit_screenshot.py renders the HTML audit report.
    "chromium": "chromium",
}
# Modules of the system Python (the targets' interpreter) and their Debian packages:
# tests/unit compile seccomp profiles with libseccomp's binding, as unit_install does on a target.
APT_PYTHON_MODULES = {"seccomp": "python3-seccomp"}
SYSTEM_PYTHON = "/usr/bin/python3"
# Pinned test tools. cosign 2.6.5 is the newest 2.x and postdates the published advisories
# against 2.x bundle verification; cargo-audit is the newest release at pinning; syft 1.50.0
# is the newest whose whole module graph the Go proxy serves here (1.57.0 needs versions
# the proxy answers 403 for).
GO_TOOLS = {
    "cosign": ("github.com/sigstore/cosign/v2/cmd/cosign", "v2.6.5"),
    "syft": ("github.com/anchore/syft/cmd/syft", "v1.50.0"),
}
CARGO_TOOLS = {"cargo-audit": "0.22.2"}
MIN_GO = (1, 24)

TOOLS = CACHE / "tools"
# The test setup's signing key and the release it signs: the executor's cargo-audit reaches
# the VMs only through the verified_binary role, which verifies this signature.
SIGNING = CACHE / "signing"
RELEASE = SIGNING / "release"


def venv_dir() -> Path:
    key = sha256_of((REPO / "requirements.txt").read_bytes(), sys.version.encode())[:12]
    return CACHE / "venv" / key


def tool_env() -> dict[str, str]:
    """Environment in which the venv's ansible/molecule/pytest and the pinned tools come first."""
    env = dict(os.environ)
    paths = [str(venv_dir() / "bin"), str(TOOLS / "bin"), str(TOOLS / "cargo" / "bin")]
    env["PATH"] = os.pathsep.join([*paths, env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv_dir())
    env["KF_CACHE"] = str(CACHE)
    env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    # The signed release (cargo-audit, its bundle, the test public key) the scenarios and the
    # lab install through the verified_binary role (molecule/resources/host_vars).
    env["KF_RELEASE_DIR"] = str(RELEASE)
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    return env


def ensure_apt() -> None:
    missing = sorted({pkg for cmd, pkg in APT_COMMANDS.items() if not shutil.which(cmd)}
                     | {pkg for mod, pkg in APT_PYTHON_MODULES.items()
                        if subprocess.run([SYSTEM_PYTHON, "-c", f"import {mod}"],
                                          capture_output=True, check=False).returncode})
    if not missing:
        return
    if os.geteuid() != 0:
        raise HarnessError(f"missing Debian packages {', '.join(missing)}; run as root or "
                           f"`apt-get install {' '.join(missing)}`")
    log(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], timeout=600, env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        timeout=1200, env=env)


def ensure_venv() -> Path:
    venv = venv_dir()
    marker = venv / ".complete"
    if marker.exists():
        return venv
    log(f"creating controller virtualenv {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(REPO / "requirements.txt")],
        timeout=1800)
    marker.write_text("ok\n")
    return venv


def ensure_ansible_test_bootstrap() -> None:
    """Give ansible-test its pip bootstrap script without the download it cannot make here."""
    source = venv_dir() / "lib"
    pattern = "python3*/site-packages/ansible_test/_internal/python_requirements.py"
    found = list(source.glob(pattern))
    if not found:
        raise HarnessError(f"ansible-test not found in {venv_dir()}")
    match = re.search(r"pip='([0-9.]+)'", found[0].read_text())
    if not match:
        raise HarnessError(f"cannot read the pip version ansible-test bootstraps from {found[0]}")
    target = Path.home() / ".ansible/test/cache" / f"get_pip_{match.group(1).replace('.', '_')}.py"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("get_pip_offline.py"), target)


def _go_version() -> tuple[int, int]:
    if not shutil.which("go"):
        return (0, 0)
    out = run(["go", "env", "GOVERSION"], capture=True, timeout=60).stdout.strip()
    parts = out.removeprefix("go").split(".")
    return (int(parts[0]), int(parts[1])) if len(parts) >= 2 else (0, 0)


def _pin_marker(name: str, version: str) -> Path:
    return TOOLS / "pins" / f"{name}@{version}"


def install_tools_commands() -> list[tuple[str, list[str], dict[str, str]]]:
    """The (name, argv, env) of every pinned tool that is not yet installed at its pin."""
    jobs = []
    for name, (module, version) in GO_TOOLS.items():
        if not _pin_marker(name, version).exists() or not (TOOLS / "bin" / name).exists():
            env = dict(os.environ, GOBIN=str(TOOLS / "bin"), CGO_ENABLED="0", GOFLAGS="-trimpath")
            jobs.append((f"{name}@{version}", ["go", "install", f"{module}@{version}"], env))
    for name, version in CARGO_TOOLS.items():
        if not _pin_marker(name, version).exists() or not (TOOLS / "cargo/bin" / name).exists():
            jobs.append((f"{name}@{version}",
                         ["cargo", "install", "--locked", "--quiet", "--version", version,
                          "--no-default-features", "--root", str(TOOLS / "cargo"), name],
                         dict(os.environ)))
    return jobs


def ensure_tools() -> None:
    """Build the pinned tools; Go ones and the Rust one in parallel (they compete only for CPU)."""
    jobs = install_tools_commands()
    if not jobs:
        ensure_signed_release()
        return
    if any(job[0].startswith(tuple(GO_TOOLS)) for job in jobs) and _go_version() < MIN_GO:
        raise HarnessError(f"Go >= {MIN_GO[0]}.{MIN_GO[1]} is needed to build cosign and syft; "
                           f"found {_go_version()}")
    if any(job[0].startswith("cargo-audit") for job in jobs) and not shutil.which("cargo"):
        raise HarnessError("cargo (Rust >= 1.88) is needed to build cargo-audit")
    (TOOLS / "pins").mkdir(parents=True, exist_ok=True)
    (TOOLS / "logs").mkdir(parents=True, exist_ok=True)
    failed = []
    with contextlib.ExitStack() as stack:
        procs = []
        for label, argv, env in jobs:
            log(f"building {label} (first run only)")
            logf = stack.enter_context(open(TOOLS / "logs" / f"{label}.log", "w"))
            # niced: on a cold machine they share two cores with the image builds, which
            # gate the VM scenarios sooner than the tools do.
            procs.append((label, subprocess.Popen(["nice", "-n", "10", *argv], env=env,
                                                  stdout=logf, stderr=logf)))
        for label, proc in procs:
            if proc.wait(timeout=3600) == 0:
                _pin_marker(*label.split("@")).write_text("ok\n")
            else:
                failed.append(f"{label} (log: {TOOLS / 'logs' / (label + '.log')})")
    if failed:
        raise HarnessError("tool build failed: " + ", ".join(failed))
    ensure_signed_release()


def ensure_signed_release() -> None:
    """Sign the built cargo-audit with the test key (made once, kept in the cache), offline.

    The key has an empty password and the signature is never uploaded to a transparency log:
    it exists only for the test scenarios and the lab.
    """
    cosign = TOOLS / "bin" / "cosign"
    binary = TOOLS / "cargo" / "bin" / "cargo-audit"
    env = dict(os.environ, COSIGN_PASSWORD="", HOME=str(SIGNING), TUF_ROOT=str(SIGNING / "tuf"))
    SIGNING.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (SIGNING / "cosign.key").exists():
        log(f"generating the test signing key in {SIGNING}")
        run([str(cosign), "generate-key-pair", "--output-key-prefix", str(SIGNING / "cosign")],
            cwd=SIGNING, env=env, timeout=120, capture=True)
    stamp = sha256_of(binary.read_bytes(), (SIGNING / "cosign.pub").read_bytes())
    marker = RELEASE / ".signed"
    if marker.exists() and marker.read_text().strip() == stamp:
        return
    log(f"signing cargo-audit into {RELEASE}")
    RELEASE.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, RELEASE / "cargo-audit")
    shutil.copyfile(SIGNING / "cosign.pub", RELEASE / "cosign.pub")
    run([str(cosign), "sign-blob", "--yes", "--key", str(SIGNING / "cosign.key"),
         "--tlog-upload=false", "--bundle", str(RELEASE / "cargo-audit.bundle"),
         str(RELEASE / "cargo-audit")], env=env, timeout=300, capture=True)
    marker.write_text(stamp + "\n")
