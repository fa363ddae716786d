"""The attack plan, the sibling unit the probe runs in, and the judging of real outcomes."""

import json
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.attack_plan import (
    LET_THROUGH,
    baseline_unit,
    build_plan,
    evaluate,
    sibling_unit,
)

FIXTURES = Path(__file__).parent / "fixtures/attack"
# Recorded with `systemctl cat kf-executor.service` in the Debian 12 scenario VM.
MERGED_252 = (FIXTURES / "systemctl-cat-kf-executor-252.txt").read_text()
# The first real run of the probe in the Debian 12 VM (before io_uring was denied and the
# wrapper got a /proc of its own): two escapes and one attempt that could not be observed.
FIRST_RUN = json.loads((FIXTURES / "debian12-first-run.json").read_text())

EXECUTOR = {"name": "executor", "user": "kf-executor", "group": "kf-executor",
            "command": "/usr/bin/python3 /opt/kernelfence/demo/executor.py",
            "state_dir": "/var/lib/kernelfence/executor",
            "readonly_paths": ["/srv/kernelfence/executor"],
            "network": {"egress": [{"host": "127.0.0.1", "port": 8088, "proto": "tcp"}]}}
ORCHESTRATOR = {"name": "orchestrator", "state_dir": "/var/lib/kernelfence/orchestrator",
                "credentials": [{"name": "signing.key", "src": "/etc/kernelfence/secrets/k"}],
                "sockets": [{"name": "o.sock", "allow": [], "path": "/run/kernelfence/o/o.sock"}],
                "readonly_paths": []}
MODEL = {"name": "model_backend", "state_dir": "/var/lib/kernelfence/model_backend",
         "readonly_paths": ["/srv/kernelfence/model"],
         "sockets": [{"name": "model.sock", "allow": ["orchestrator"],
                      "path": "/run/kernelfence/model_backend/model.sock"},
                     {"name": "jobs.sock", "allow": ["executor"], "path": "/run/x/jobs.sock"}]}
FACTS = {"pids": {"orchestrator": 400, "model_backend": 500}, "host_pid": 900,
         "files": {"/srv/kernelfence/model": "/srv/kernelfence/model/answers.json",
                   "/srv/kernelfence/executor": "/srv/kernelfence/executor/Cargo.lock"},
         "block_device": "/dev/vda"}
ARGV = ["/usr/bin/python3", "/run/kf-attack/attack_probe.py", "/run/kf-attack/plan.json"]


def plan(version):
    return {p["id"]: p for p in build_plan(EXECUTOR, [ORCHESTRATOR, EXECUTOR, MODEL], version,
                                           FACTS)}


def test_the_plan_covers_every_target_of_the_issue():
    ids = plan(257)
    for ident in ("read-credential-orchestrator-signing.key", "list-credentials-orchestrator",
                  "read-state-model_backend", "write-data-model_backend-/srv/kernelfence/model",
                  "create-data-model_backend-/srv/kernelfence/model",
                  "connect-socket-model_backend-model.sock", "see-orchestrator",
                  "signal-orchestrator", "ptrace-orchestrator", "environ-orchestrator",
                  "mem-orchestrator", "root-orchestrator", "see-host-pid", "procfs-of-host",
                  "proc1-root-credential", "unshare-user", "unshare-net", "unshare-mnt", "mount",
                  "init-module", "bpf", "perf-event-open", "keyctl", "kexec-load",
                  "ptrace-own-child", "io-uring-setup", "raw-socket", "packet-socket",
                  "bind-privileged-port", "clock-settime", "sethostname", "reboot",
                  "setuid-su", "write-etc", "write-usr-lib", "write-boot", "read-dev-mem",
                  "read-block-device", "mmap-wx", "egress-other-port", "egress-dns",
                  "control-egress-allowed", "control-bad-pointer"):
        assert ident in ids, ident
    # A socket the executor is allowed to use is not attacked.
    assert "connect-socket-model_backend-jobs.sock" not in ids
    # Every entry says what it expects; controls expect success (or EFAULT for the bad pointer).
    assert all(p["expect"] for p in ids.values())
    assert {p["expect"] for p in ids.values() if p["control"]} == {"OK", "EFAULT"}


def test_expectations_follow_the_systemd_version_where_the_mechanism_differs():
    native, wrapped = plan(257), plan(252)
    assert native["write-proc-sys"]["expect"] == "ENOENT"
    assert wrapped["write-proc-sys"]["expect"] == "EACCES"
    same = [k for k in native if k not in ("write-proc-sys", "read-kmsg")]
    assert all(native[k]["expect"] == wrapped[k]["expect"] for k in same)


def test_the_network_attempts_stay_on_loopback():
    for item in plan(257).values():
        if item["kind"] in ("tcp_connect", "udp_exchange"):
            assert item["args"][0].startswith("127."), item


def test_the_sibling_keeps_every_sandboxing_line_and_replaces_only_the_start():
    text = sibling_unit(MERGED_252, EXECUTOR, ARGV, "/run/kf-attack/confined.json")
    lines = text.splitlines()
    service = MERGED_252.split("[Service]", 1)[1].split("[Install]", 1)[0].splitlines()
    dropped = ("Type=", "ExecStart=", "Restart=", "RestartSec=")
    for line in service:
        if line and not line.startswith("#") and not line.startswith(dropped):
            assert line in lines, line
    execs = [ln for ln in lines if ln.startswith("ExecStart=")]
    assert len(execs) == 1
    # The wrapper (launcher, seccomp profile, bubblewrap) stays; only the command changes.
    assert execs[0].startswith("ExecStart=/usr/bin/python3 -I /usr/libexec/kernelfence/"
                               "kf-launch.py /etc/kernelfence/executor/seccomp.json -- "
                               "/usr/bin/bwrap ")
    assert execs[0].endswith(" -- " + " ".join(ARGV))
    assert "Type=oneshot" in lines and "JoinsNamespaceOf=kf-executor.service" in lines
    assert "StandardOutput=truncate:/run/kf-attack/confined.json" in lines
    assert "Requires=kf-executor.socket" not in lines and "[Install]" not in lines
    assert not any(ln.startswith("Restart=") for ln in lines)


def test_the_sibling_keeps_the_check_of_the_compiled_seccomp_program():
    """systemd 252 since the program is compiled at deploy time: the check before each start
    is part of the confinement (a component's other ExecStartPre= lines are not)."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
        exec_lines,
    )

    lines = exec_lines({**EXECUTOR, "config_dir": "/etc/kernelfence/executor"}, 252)
    merged = MERGED_252.replace(
        next(ln for ln in MERGED_252.splitlines() if ln.startswith("ExecStart=")),
        "\n".join(["ExecStartPre=/usr/local/bin/prepare-cache",
                   *(f"{k}={v}" for k, v in lines)]))
    text = sibling_unit(merged, EXECUTOR, ARGV, "/x").splitlines()
    assert f"ExecStartPre={lines[0][1]}" in text
    assert "ExecStartPre=/usr/local/bin/prepare-cache" not in text
    execs = [ln for ln in text if ln.startswith("ExecStart=")]
    assert execs == [f"ExecStart={lines[1][1][:-len(EXECUTOR['command'])]}{' '.join(ARGV)}"]


def test_a_unit_whose_start_is_not_the_command_is_refused():
    other = dict(EXECUTOR, command="/usr/bin/something-else")
    with pytest.raises(ValueError, match="does not end with the component's command"):
        sibling_unit(MERGED_252, other, ARGV, "/x")
    with pytest.raises(ValueError, match="no ExecStart="):
        sibling_unit("[Unit]\nDescription=x\n[Service]\nUser=a\n", EXECUTOR, ARGV, "/x")


def test_the_baseline_has_the_user_and_nothing_else():
    text = baseline_unit(EXECUTOR, ARGV, "/run/kf-attack/baseline.json")
    keys = {ln.split("=", 1)[0] for ln in text.splitlines() if "=" in ln}
    assert keys == {"Description", "Type", "User", "Group", "ExecStart", "StandardOutput",
                    "StandardError", "TimeoutStartSec"}


def test_the_first_real_run_is_judged_as_it_was_two_escapes_and_one_unobserved():
    rows = FIRST_RUN["rows"]
    the_plan = [{"id": r["id"], "category": r["category"], "attempt": r["attempt"],
                 "control": r["control"], "expect": r["expected"], "why": r["why"]}
                for r in rows]
    confined = {r["id"]: r["observed"] for r in rows}
    baseline = {r["id"]: r["baseline"] for r in rows}
    judged = evaluate(the_plan, confined, baseline)["summary"]
    assert judged["escaped"] == ["procfs-of-host", "io-uring-setup"]
    assert judged["unexpected"] == ["setuid-su"]  # 'timeout': neither blocked nor let through
    assert judged["controls_failed"] == [] and judged["baseline_controls_failed"] == []
    assert len(judged["baseline_let_through"]) == 11
    assert judged["attempted"] == judged["blocked"] + 3


def test_a_missing_outcome_and_a_failed_control_fail():
    the_plan = [{"id": "a", "category": "k", "attempt": "a", "control": False, "expect": "EPERM",
                 "why": ""},
                {"id": "c", "category": "control", "attempt": "c", "control": True,
                 "expect": "OK", "why": ""}]
    judged = evaluate(the_plan, {"c": "EACCES"}, None)["summary"]
    assert judged["unexpected"] == ["a"] and judged["controls_failed"] == ["c"]
    assert "baseline_let_through" not in judged
    assert "EINVAL" in LET_THROUGH  # a privilege check passed, then the argument was refused
