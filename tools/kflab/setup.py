"""Install what the lab and the tests need, from Debian, PyPI, crates.io and the Go proxy only.

Everything lands under the cache directory keyed by its pin, so a warm machine reuses it and
a changed pin installs the new version beside nothing stale.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .common import CACHE, REPO, HarnessError, StateError, log, run, sha256_of

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
    # cosign 3 beside cosign 2 (the verifier reads both tools' bundles): installed as
    # bin/cosign3. v3.1.3 is the newest that Go 1.26 builds (v3.1.4 needs Go 1.27).
    "cosign3": ("github.com/sigstore/cosign/v3/cmd/cosign", "v3.1.3"),
}
CARGO_TOOLS = {"cargo-audit": "0.22.2"}
MIN_GO = (1, 26)
MIN_RUST = (1, 88)

TOOLS = CACHE / "tools"
# The test setup's signing key and the release it signs: the executor's cargo-audit reaches
# the VMs only through the verified_binary role, which verifies this signature.
SIGNING = CACHE / "signing"
RELEASE = SIGNING / "release"


# The collection's controller requirements, then the bench's and tests' own (not shipped).
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")


def venv_dir() -> Path:
    key = sha256_of(*((REPO / name).read_bytes() for name in REQUIREMENTS),
                    sys.version.encode())[:12]
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


def missing_packages(commands: dict[str, str] | None = None) -> list[str]:
    """Debian packages whose commands (or, for python3-venv, module; for the system python's
    modules, the module) this machine lacks."""
    commands = APT_COMMANDS if commands is None else commands
    missing = {pkg for cmd, pkg in commands.items() if not shutil.which(cmd)}
    if commands is APT_COMMANDS:
        if importlib.util.find_spec("ensurepip") is None:
            missing.add("python3-venv")  # `python3 -m venv` needs it on Debian
        missing |= {pkg for mod, pkg in APT_PYTHON_MODULES.items()
                    if subprocess.run([SYSTEM_PYTHON, "-c", f"import {mod}"],
                                      capture_output=True, check=False).returncode}
    return sorted(missing)


def ensure_apt(commands: dict[str, str] | None = None) -> None:
    missing = missing_packages(commands)
    if not missing:
        return
    if os.geteuid() != 0:
        raise StateError(f"missing Debian packages: {', '.join(missing)} (not root, so ./kf "
                         "cannot install them)",
                         f"sudo apt-get install --no-install-recommends {' '.join(missing)}")
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
    run([str(venv / "bin" / "pip"), "install", "-q",
         *(arg for name in REQUIREMENTS for arg in ("-r", str(REPO / name)))], timeout=1800)
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


def _version_of(argv: list[str], prefix: str) -> tuple[int, int] | None:
    """(major, minor) from e.g. `go env GOVERSION` or `cargo --version`; None when absent."""
    if not shutil.which(argv[0]):
        return None
    out = run(argv, capture=True, timeout=60, check=False).stdout.strip()
    match = re.match(rf"{re.escape(prefix)}(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _go_version() -> tuple[int, int] | None:
    return _version_of(["go", "env", "GOVERSION"], "go")


def _cargo_version() -> tuple[int, int] | None:
    return _version_of(["cargo", "--version"], "cargo ")


def _pin_marker(name: str, version: str) -> Path:
    return TOOLS / "pins" / f"{name}@{version}"


def _install_staged(name: str) -> None:
    """Move a built Go tool from its staging directory into bin/ under the tool's name (the
    command's name may differ: cosign3 is cmd/cosign), in one rename."""
    command = GO_TOOLS[name][0].rsplit("/", 1)[-1]
    (TOOLS / "bin").mkdir(parents=True, exist_ok=True)
    os.replace(TOOLS / "staging" / name / command, TOOLS / "bin" / name)


def tool_path(name: str) -> Path:
    """Where a pinned tool is installed (cargo ones under tools/cargo/bin)."""
    return TOOLS / "cargo" / "bin" / name if name in CARGO_TOOLS else TOOLS / "bin" / name


def tool_ready(name: str) -> bool:
    version = CARGO_TOOLS[name] if name in CARGO_TOOLS else GO_TOOLS[name][1]
    return _pin_marker(name, version).exists() and tool_path(name).exists()


def install_tools_commands(names: list[str] | None = None
                           ) -> list[tuple[str, list[str], dict[str, str]]]:
    """The (name, argv, env) of every wanted pinned tool not yet installed at its pin.

    A Go tool is built into a staging directory and renamed into tools/bin when complete, so a
    playbook that looks for cosign or syft on PATH while they build finds all of one or none.
    """
    wanted = list(GO_TOOLS) + list(CARGO_TOOLS) if names is None else names
    jobs = []
    for name, (module, version) in GO_TOOLS.items():
        if name in wanted and not tool_ready(name):
            env = dict(os.environ, GOBIN=str(TOOLS / "staging" / name), CGO_ENABLED="0",
                       GOFLAGS="-trimpath")
            jobs.append((f"{name}@{version}", ["go", "install", f"{module}@{version}"], env))
    for name, version in CARGO_TOOLS.items():
        if name in wanted and not tool_ready(name):
            jobs.append((f"{name}@{version}",
                         ["cargo", "install", "--locked", "--quiet", "--version", version,
                          "--no-default-features", "--root", str(TOOLS / "cargo"), name],
                         dict(os.environ)))
    return jobs


def check_build_tools(jobs: list[tuple[str, list[str], dict[str, str]]]) -> None:
    """Go and cargo, at the versions the pins need, before anything is started."""
    if any(job[0].split("@")[0] in GO_TOOLS for job in jobs):
        found = _go_version()
        if found is None or found < MIN_GO:
            have = "not on PATH" if found is None else f"go{found[0]}.{found[1]}"
            raise HarnessError(
                f"Go >= {MIN_GO[0]}.{MIN_GO[1]} builds cosign and syft (for the tests); "
                f"found {have}. Install it from https://go.dev/dl (or put it on PATH), "
                "then re-run")
    if any(job[0].split("@")[0] in CARGO_TOOLS for job in jobs):
        found = _cargo_version()
        if found is None or found < MIN_RUST:
            have = "not on PATH" if found is None else f"cargo {found[0]}.{found[1]}"
            raise HarnessError(
                f"cargo (Rust >= {MIN_RUST[0]}.{MIN_RUST[1]}) builds cargo-audit; found "
                f"{have}. Install Rust with rustup (or put ~/.cargo/bin on PATH), then re-run")


# The builds this process started: stopped when the command fails or is interrupted, so no
# compiler keeps running behind a `./kf` that has already returned.
_BUILDS: list[subprocess.Popen] = []


def stop_builds() -> None:
    for proc in _BUILDS:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def ensure_tools(names: list[str] | None = None) -> None:
    """Build the wanted pinned tools (default: all), in parallel (they compete only for CPU).

    `./kf lab` wants only cargo-audit (the lab's payload); cosign and syft are built for the
    tests that run them (`./kf test`, `./kf setup`).
    """
    jobs = install_tools_commands(names)
    if not jobs:
        return
    check_build_tools(jobs)
    for sub in ("pins", "logs", "bin"):
        (TOOLS / sub).mkdir(parents=True, exist_ok=True)
    failed = []
    with contextlib.ExitStack() as stack:
        procs = []
        for label, argv, env in jobs:
            log(f"building {label} (first run only; log: {TOOLS / 'logs' / (label + '.log')})")
            logf = stack.enter_context(open(TOOLS / "logs" / f"{label}.log", "w"))
            # niced: on a cold machine they share two cores with the image build and the
            # guest, which gate the lab and the VM scenarios sooner than the tools do.
            proc = subprocess.Popen(["nice", "-n", "10", *argv], env=env, stdout=logf,
                                    stderr=logf)
            _BUILDS.append(proc)
            procs.append((label, proc))
        for label, proc in procs:
            if proc.wait(timeout=3600) == 0:
                name, version = label.split("@")
                if name in GO_TOOLS:
                    _install_staged(name)
                _pin_marker(name, version).write_text("ok\n")
            else:
                failed.append(f"{label} (log: {TOOLS / 'logs' / (label + '.log')})")
    if failed:
        raise HarnessError("tool build failed: " + ", ".join(failed))


def ensure_signed_release() -> None:
    """Sign the built cargo-audit into RELEASE with the collection's own Python path.

    cryptography signs (a cosign-compatible key bundle), cyclonedx-python-lib writes the SBOM
    (syft's when syft is built): no cosign or syft is needed, so the lab does not wait for
    them. Runs in the controller virtualenv, which has both libraries.
    """
    if not tool_path("cargo-audit").exists():
        raise HarnessError(f"cargo-audit is not built yet at {tool_path('cargo-audit')}; "
                           "run `./kf setup` first")
    run([str(venv_dir() / "bin" / "python"), "-m", "tools.kflab.release", "sign"],
        cwd=REPO, env=tool_env(), timeout=900)


def ensure_cosign_key() -> None:
    """The release key in cosign's own format (cosign.key), for the VM tests that re-sign
    with the real cosign; made from the Python key once cosign is built."""
    if tool_path("cosign").exists():
        run([str(venv_dir() / "bin" / "python"), "-m", "tools.kflab.release", "cosign-key"],
            cwd=REPO, env=tool_env(), timeout=300)
