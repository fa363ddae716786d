"""The systemd 252 start path without an interpreter, live: the seccomp program compiled at deploy
time is checked before each start and handed to bubblewrap; a missing or changed program stops
the start with a journal line naming the file. On systemd 257 the command starts itself."""

import pytest
from conftest import exe, systemd_version, unit_pids

COMPONENTS = ["orchestrator", "executor", "model_backend"]
WRAPPER = "/usr/bin/bwrap"
LAUNCHER = "/usr/libexec/kernelfence/kf-launch.py"


def show(host, unit, prop):
    return host.run("systemctl show -P %s %s", prop, unit).stdout.strip()


def workload(host, name):
    work = [p for p in unit_pids(host, f"kf-{name}.service") if exe(host, p) != WRAPPER]
    assert work, f"kf-{name}.service runs no workload process"
    return work[0]


@pytest.mark.parametrize("name", COMPONENTS)
def test_start_path_has_no_interpreter_and_the_workload_keeps_dev_null(host, name):
    unit = f"kf-{name}.service"
    bpf = f"/etc/kernelfence/{name}/seccomp.bpf"
    start, pre = show(host, unit, "ExecStart"), show(host, unit, "ExecStartPre")
    assert not host.file(LAUNCHER).exists
    if systemd_version(host) >= 257:
        assert WRAPPER not in start and "sha256sum" not in pre
        assert not host.file(bpf).exists
        return
    assert "python3 -I" not in start and "kf-launch" not in start
    assert "path=/bin/sh ;" in start and f" {bpf} {WRAPPER} " in start, start
    assert "--seccomp 9 --" in start and start.index(WRAPPER) < start.index("--seccomp 9")
    assert f"/usr/bin/sha256sum --check --quiet --strict {bpf}.sha256" in pre
    assert host.run("sha256sum --check --strict %s.sha256", bpf).rc == 0
    pid = workload(host, name)
    fds = host.run("ls -l /proc/%s/fd", str(pid)).stdout
    assert host.run("readlink /proc/%s/fd/0", str(pid)).stdout.strip() == "/dev/null", fds
    assert bpf not in fds
    # Socket activation: the unit's listening socket is still the workload's descriptor 3
    # (LISTEN_FDS starts at 3); the program's descriptor 9 is closed by bubblewrap.
    assert host.run("readlink /proc/%s/fd/3", str(pid)).stdout.startswith("socket:["), fds
    assert host.run("readlink /proc/%s/fd/9", str(pid)).rc != 0, fds
    nspid = host.run("grep NSpid /proc/%s/status", str(pid)).stdout.split()
    assert nspid[-1] == "2", "bubblewrap is PID 1 of the namespace, the workload PID 2"


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_a_missing_or_changed_program_stops_the_start_naming_the_file(host, damage):
    if systemd_version(host) >= 257:
        assert not host.file("/etc/kernelfence/model_backend/seccomp.bpf").exists
        return
    unit = "kf-model_backend.service"
    bpf = "/etc/kernelfence/model_backend/seccomp.bpf"
    since = host.run("date +%s").stdout.strip()
    keep = host.run("cp -p %s %s.kf-test", bpf, bpf)
    assert keep.rc == 0, keep.stderr
    try:
        if damage == "missing":
            host.run("rm -f %s", bpf)
        else:  # one bit of the program flipped, size and owner unchanged
            flip = ("import sys; p = sys.argv[1]; d = bytearray(open(p, 'rb').read()); "
                    "d[len(d) // 2] ^= 1; open(p, 'r+b').write(d)")
            assert host.run("python3 -c %s %s", flip, bpf).rc == 0
        restart = host.run("systemctl restart %s", unit)
        assert restart.rc != 0, "the service started with a missing or changed program"
        journal = host.run("journalctl -u %s --since=@%s --no-pager -o cat", unit, since).stdout
        said = f"{bpf}: FAILED open or read" if damage == "missing" else f"{bpf}: FAILED"
        assert said in journal, journal[-2000:]
        # The start stopped before the workload: no main process, nothing left in the unit.
        assert show(host, unit, "MainPID") == "0"
        assert show(host, unit, "ActiveState") != "active"
    finally:
        host.run("mv -f %s.kf-test %s", bpf, bpf)
        host.run("systemctl reset-failed %s", unit)
        host.run("systemctl restart %s", unit)
    assert host.service(unit).is_running
