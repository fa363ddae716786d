"""The systemd 252 start path: the seccomp profile compiled to BPF at deploy time (real
libseccomp), checked by the unit before each start and handed to the real bubblewrap of this
host. The unit's ExecStartPre=/ExecStart= lines are run as systemd runs them (each start
command in order, stopping at the first that fails), as an unprivileged user."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    SECCOMP_FD,
    exec_lines,
    seccomp_files,
    workload_syscalls,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.seccomp_profile import (
    ProfileError,
    bpf_checksums,
    check_profile,
    compile_bpf,
    oci_profile,
    parse_syscall_groups,
)

FIXTURES = Path(__file__).parent / "fixtures"
GROUPS = parse_syscall_groups((FIXTURES / "systemd_analyze/syscall-filter-252.txt").read_text())
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
# The workload: what it sees of the filter (errno of calls the profile denies), of its
# descriptors (where each points), and of its PID namespace.
PROBE = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    rc = libc.syscall(nr, *args)
    return 0 if rc == 0 else ctypes.get_errno()
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        pass  # the directory listing's own descriptor
print(json.dumps({"unshare_user": call(272, 0x10000000), "clone3": call(435, 0, 0),
                  "fds": fds, "pid": os.getpid()}))
"""


def seccomp_binding():
    """libseccomp's Python binding: the venv's, else the system Python's (Debian
    python3-seccomp, the package unit_install uses on a target; ./kf test installs it)."""
    try:
        import seccomp  # noqa: F401

        return sys.modules["seccomp"]
    except ImportError:
        pass
    tag = f"{sys.version_info.major}{sys.version_info.minor}"
    found = sorted(Path("/usr/lib/python3/dist-packages").glob(f"seccomp.cpython-{tag}-*.so"))
    assert found, "python3-seccomp is not installed: apt-get install python3-seccomp"
    spec = importlib.util.spec_from_file_location("seccomp", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["seccomp"] = module
    return module


@pytest.fixture(scope="module")
def profile():
    seccomp_binding()
    allow, deny, readd = workload_syscalls({"syscalls": {}})
    return oci_profile(allow, deny, GROUPS, readd)


def test_compiled_program_is_the_profile_and_the_same_every_time(profile):
    program, unknown = compile_bpf(profile)
    assert len(program) % 8 == 0 and len(program) > 8 * 50
    # Deterministic: deploy-time verification compiles again and compares the bytes.
    assert compile_bpf(json.loads(json.dumps(profile)))[0] == program
    # Names the recorded systemd knows and this libseccomp may not are skipped, not fatal.
    assert set(unknown) <= set(profile["syscalls"][0]["names"])
    stricter = json.loads(json.dumps(profile))
    stricter["syscalls"][0]["names"].remove("getpriority")
    assert compile_bpf(stricter)[0] != program, "a profile change changes the program"


@pytest.mark.parametrize("change, message", [
    ({"defaultAction": "SCMP_ACT_ALLOW"}, "defaultAction 'SCMP_ACT_ALLOW'"),
    ({"defaultErrnoRet": 0}, "defaultErrnoRet 0"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_TRACE"}]}, "syscalls[0].action"),
    ({"syscalls": [{"names": "read", "action": "SCMP_ACT_ALLOW"}]}, "syscalls[0].names"),
    ({"syscalls": [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_GT"}]}]},
     "syscalls[0].args[0].op 'SCMP_CMP_GT'"),
])
def test_profiles_the_compiler_refuses_name_the_field(profile, change, message):
    bad = {**profile, **change}
    with pytest.raises(ProfileError) as exc:
        check_profile(bad)
    assert message in str(exc.value)
    with pytest.raises(ProfileError):
        compile_bpf(bad)


def test_checksum_file_covers_program_and_profile(tmp_path, profile):
    program, _unknown = compile_bpf(profile)
    text = json.dumps(profile)
    sums = bpf_checksums(f"{tmp_path}/p.bpf", program, f"{tmp_path}/p.json", text)
    (tmp_path / "p.bpf").write_bytes(program)
    (tmp_path / "p.json").write_text(text)
    (tmp_path / "p.bpf.sha256").write_text(sums)
    assert sums.splitlines()[0] == f"{hashlib.sha256(program).hexdigest()}  {tmp_path}/p.bpf"
    check = ["sha256sum", "--check", "--quiet", "--strict", str(tmp_path / "p.bpf.sha256")]
    assert subprocess.run(check, capture_output=True, check=False).returncode == 0
    (tmp_path / "p.json").write_text(text.replace("getpriority", "getpriorit"))
    failed = subprocess.run(check, capture_output=True, text=True, check=False)
    assert failed.returncode != 0 and f"{tmp_path}/p.json: FAILED" in failed.stdout


# --- the real start path on this host ---------------------------------------------------


def systemd_argv(line: str) -> list[str]:
    """An ExecStart= value as systemd splits it (quotes; '$$' is a literal '$')."""
    return [word.replace("$$", "$") for word in shlex.split(line)]


def start(lines: list[tuple[str, str]]) -> subprocess.CompletedProcess:
    """Run a service's start commands as systemd does: every ExecStartPre= in order, the start
    stopping at the first that fails, then ExecStart=; as an unprivileged user, with standard
    input /dev/null (StandardInput=null, the default)."""
    result = None
    for key in ("ExecStartPre", "ExecStart"):
        for value in (v for k, v in lines if k == key):
            result = subprocess.run(systemd_argv(value), capture_output=True, text=True,
                                    stdin=subprocess.DEVNULL, user=NOBODY, group=NOBODY,
                                    extra_groups=[], timeout=60, check=False)
            if result.returncode != 0:
                return result
    return result


@pytest.fixture
def deployed(profile):
    """A component whose profile was compiled and installed as unit_install does it, in a
    directory the unprivileged user can read."""
    root = tempfile.mkdtemp(prefix="kf-seccomp-")
    os.chmod(root, 0o755)
    record = {"name": "probe", "config_dir": root,
              "command": f"{SYSTEM_PYTHON} -I -c {shlex.quote(PROBE).replace('$', '$$')}"}
    files = seccomp_files(root)
    text = json.dumps(profile, indent=2)
    program, _unknown = compile_bpf(profile)
    Path(files["profile"]).write_text(text)
    Path(files["bpf"]).write_bytes(program)
    Path(files["checksums"]).write_text(
        bpf_checksums(files["bpf"], program, files["profile"], text))
    for path in files.values():
        os.chmod(path, 0o644)
    yield record, files, exec_lines(record, 252)
    for path in files.values():
        Path(path).unlink(missing_ok=True)
    os.rmdir(root)


def test_workload_runs_under_the_compiled_filter_with_stdin_kept(deployed):
    _record, files, lines = deployed
    assert [key for key, _value in lines] == ["ExecStartPre", "ExecStart"]
    assert "python3 -I /usr/libexec" not in lines[1][1]  # no interpreter before bubblewrap
    result = start(lines)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    # The profile's errno: EPERM (its default) for a new user namespace, ENOSYS for clone3.
    assert seen["unshare_user"] == errno.EPERM
    assert seen["clone3"] == errno.ENOSYS
    assert seen["pid"] == 2, "bubblewrap is PID 1 of the namespace, the workload PID 2"
    # bubblewrap closed the program's descriptor; standard input is still /dev/null.
    assert seen["fds"]["0"] == "/dev/null"
    assert str(SECCOMP_FD) not in seen["fds"] or seen["fds"][str(SECCOMP_FD)] != files["bpf"]
    assert files["bpf"] not in seen["fds"].values()


def test_control_without_the_program_the_same_calls_succeed(deployed):
    """The probe can fail: bubblewrap alone (no --seccomp) lets it create a user namespace."""
    _record, _files, lines = deployed
    bwrap = systemd_argv(lines[1][1])
    bwrap = bwrap[bwrap.index("/usr/bin/bwrap"):]
    cut = bwrap.index("--seccomp")
    del bwrap[cut:cut + 2]
    result = subprocess.run(bwrap, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            user=NOBODY, group=NOBODY, extra_groups=[], timeout=60, check=False)
    seen = json.loads(result.stdout)
    assert seen["unshare_user"] == 0 and seen["clone3"] == errno.EINVAL


def test_missing_program_stops_the_start_naming_the_file(deployed):
    _record, files, lines = deployed
    os.unlink(files["bpf"])
    result = start(lines)
    assert result.returncode != 0 and not result.stdout.startswith("{")
    assert f"{files['bpf']}: FAILED open or read" in result.stdout
    # Even without the check line the hand-off itself stops, naming the file.
    alone = start([line for line in lines if line[0] == "ExecStart"])
    assert alone.returncode != 0 and alone.stdout == ""
    assert files["bpf"] in alone.stderr


@pytest.mark.parametrize("target", ["bpf", "profile", "checksums"])
def test_changed_program_or_profile_stops_the_start_naming_the_file(deployed, target):
    _record, files, lines = deployed
    path = Path(files[target])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = start(lines)
    assert result.returncode != 0 and not result.stdout.startswith("{")
    said = result.stdout + result.stderr
    if target == "checksums":  # a changed checksum names the file it no longer matches
        assert f"{files['bpf']}: FAILED" in said or f"{files['profile']}: FAILED" in said
    else:
        assert f"{files[target]}: FAILED" in said


def test_a_socket_activated_service_keeps_its_listening_socket_on_descriptor_3(deployed):
    """systemd passes a socket-activated service its sockets from descriptor 3 (LISTEN_FDS):
    the hand-off must leave them there (the program goes on descriptor SECCOMP_FD, above)."""
    _record, _files, lines = deployed
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(f"{tempfile.mkdtemp(prefix='kf-sock-')}/s")
    listener.listen()

    def as_systemd_passes_it():
        os.dup2(listener.fileno(), 3)

    for key in ("ExecStartPre", "ExecStart"):
        for value in (v for k, v in lines if k == key):
            result = subprocess.run(
                systemd_argv(value), capture_output=True, text=True,
                stdin=subprocess.DEVNULL, user=NOBODY, group=NOBODY, extra_groups=[],
                pass_fds=(3,) if key == "ExecStart" else (), timeout=60, check=False,
                preexec_fn=as_systemd_passes_it if key == "ExecStart" else None)
            assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["fds"]["3"].startswith("socket:["), seen["fds"]
    assert str(SECCOMP_FD) not in seen["fds"], seen["fds"]
    assert seen["unshare_user"] == errno.EPERM  # and the filter is still loaded
    listener.close()
