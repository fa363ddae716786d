"""Why a unit failed, read from systemd output recorded in a Debian 13 guest (systemd 257)."""

import subprocess
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.syscall_names import (
    syscall_name,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.unit_failure import (
    changed_directives,
    exit_status,
    explain,
    parse_journal,
    parse_show,
    seccomp_events,
)

FIX = Path(__file__).parent / "fixtures/unit_failure/debian13"


def recorded(case):
    unit = f"kfrec-{case}.service"
    show = parse_show((FIX / f"{case}.show").read_text())
    entries = parse_journal((FIX / f"{case}.journal.json").read_text())
    return unit, show, entries, (FIX / f"{case}.service").read_text()


def test_namespace_failure_names_the_directive_and_the_exit_status():
    unit, show, entries, text = recorded("namespace")
    result = explain(unit, show, entries, text, "executor")
    assert result["exit_status"] == "226/NAMESPACE"
    assert result["directive"] == "InaccessiblePaths=/srv/kernelfence/executor-missing"
    assert ("systemd could not apply `InaccessiblePaths=/srv/kernelfence/executor-missing` "
            "(Failed to set up mount namespacing: /srv/kernelfence/executor-missing: No such file"
            " or directory)") in result["text"]
    assert result["fix"].startswith("correct or remove `InaccessiblePaths` in "
                                    "kernelfence_components[executor]")


def test_sigsys_names_the_syscall_from_the_kernel_audit_line():
    unit, show, entries, text = recorded("sigsys")
    entries += parse_journal((FIX / "audit-kernel.journal.json").read_text())
    result = explain(unit, show, entries, text, "model_backend")
    assert result["exit_status"] == "killed by SIGSYS"
    assert [(e["syscall"], e["number"], e["signal"], e["action"]) for e in result["syscalls"]] \
        == [("accept4", 288, "SIGSYS", "killed the process")]
    assert "python3: accept4 (killed the process, SIGSYS)" in result["text"]
    assert "add it to kernelfence_components[model_backend].syscalls.allow" in result["fix"]


def test_eperm_reports_the_workloads_last_words_and_what_the_run_changed():
    unit, show, entries, text = recorded("eperm")
    before = text.replace("SystemCallFilter=~accept4 accept", "SystemCallFilter=~accept")
    result = explain(unit, show, entries, text, "model_backend", before)
    assert result["exit_status"] == "1/FAILURE"
    assert result["output"][-1] == "PermissionError: [Errno 1] Operation not permitted"
    assert result["changes"] == ["SystemCallFilter=~... added accept4"]
    assert result["fix"] == ("the workload needs a syscall this run denied: remove accept4 "
                             "from kernelfence_components[model_backend].syscalls.deny")
    assert result["syscalls"] == []  # an errno denial leaves no audit record: nothing invented
    # Without a change to the filter in this run, the fix stays general.
    result = explain(unit, show, entries, text, "model_backend", text)
    assert result["changes"] == []
    assert "a syscall its filter denies (kernelfence_components[model_backend].syscalls)" \
        in result["fix"]


def test_the_wrappers_start_up_notice_is_not_taken_for_the_workloads_last_words():
    """Debian 12 (bubblewrap path): the launcher's notice of the next restart lands after the
    crash's traceback; the fix must still come from the traceback (seen in a CI run)."""
    unit, show, entries, text = recorded("eperm")
    before = text.replace("SystemCallFilter=~accept4 accept", "SystemCallFilter=~accept")
    notice = {**[e for e in entries if e.get("_TRANSPORT") == "stdout"][-1],
              "MESSAGE": "kf-launch: 2 names not known here: riscv_hwprobe uretprobe"}
    result = explain(unit, show, [*entries, notice], text, "model_backend", before)
    assert result["output"][-1] == "PermissionError: [Errno 1] Operation not permitted"
    assert result["fix"] == ("the workload needs a syscall this run denied: remove accept4 "
                             "from kernelfence_components[model_backend].syscalls.deny")


def test_missing_binary_is_203_exec():
    unit, show, entries, text = recorded("exec")
    result = explain(unit, show, entries, text, "executor")
    assert result["exit_status"] == "203/EXEC"
    assert "Unable to locate executable '/usr/local/bin/kf-no-such-binary'" in result["text"]
    assert "check the component's `command`" in result["fix"]


@pytest.mark.parametrize("case, expected", [
    ("namespace", "226/NAMESPACE"), ("sigsys", "killed by SIGSYS"), ("eperm", "1"),
    ("exec", "203/EXEC")])
def test_exit_status_from_systemctl_show_alone(case, expected):
    """Without the journal (rotated, or not readable), `systemctl show` still says it."""
    _unit, show, _entries, _text = recorded(case)
    assert exit_status(show, []) == expected


def test_wrapper_exit_status_128_plus_signal():
    assert exit_status({"ExecMainCode": "1", "ExecMainStatus": "159"}, []) == "159 (128+SIGSYS)"


def test_audit_record_delivered_by_journald_audit_socket():
    """Same record as journald's audit transport stores it (MESSAGE without the prefix)."""
    entry = {"_TRANSPORT": "audit", "_AUDIT_TYPE": "1326", "_AUDIT_TYPE_NAME": "SECCOMP",
             "MESSAGE": parse_journal((FIX / "audit-kernel.journal.json").read_text())[0]
             ["MESSAGE"].split("): ", 1)[1]}
    assert [e["syscall"] for e in seccomp_events([entry])] == ["accept4"]


def test_syscall_names():
    assert syscall_name(288) == "accept4" and syscall_name(0) == "read"
    assert syscall_name(435) == "clone3" and syscall_name(462) == "mseal"
    assert syscall_name(288, "c00000b7") == "syscall 288 (arch c00000b7)"


def test_changed_directives_lists_added_and_removed_lines():
    old = "[Service]\nMemoryMax=1G\nProtectHome=yes\n"
    new = "[Service]\nMemoryMax=2G\nProtectHome=yes\nInaccessiblePaths=/srv/x\n"
    assert changed_directives(old, new) == ["MemoryMax=2G (was MemoryMax=1G)",
                                            "+InaccessiblePaths=/srv/x"]
    assert changed_directives(None, new) == []
    assert changed_directives(new, new) == []


def test_parse_journal_skips_junk_and_decodes_byte_messages():
    text = 'not json\n{"MESSAGE": [104, 105, 255]}\n{"MESSAGE": "ok"}\n'
    assert [e["MESSAGE"] for e in parse_journal(text)] == ["hi\ufffd", "ok"]


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_failed_check_of_the_compiled_seccomp_program_says_which_file_and_to_redeploy(
        tmp_path, damage):
    """Debian 12: the unit's ExecStartPre= check (sha256sum, real output from this machine)
    stopped the start, so the workload never ran: sha256sum's lines are the cause, not the
    workload's last words (journal entries shaped like the recorded stdout ones)."""
    bpf, profile = tmp_path / "seccomp.bpf", tmp_path / "seccomp.json"
    bpf.write_bytes(b"\x00" * 16)
    profile.write_text("{}\n")
    sums = subprocess.run(["sha256sum", str(bpf), str(profile)], capture_output=True, text=True,
                          check=True).stdout
    (tmp_path / "seccomp.bpf.sha256").write_text(sums)
    if damage == "changed":
        bpf.write_bytes(b"\x01" * 16)
    else:
        bpf.unlink()
    check = subprocess.run(["sha256sum", "--check", "--quiet", "--strict",
                            str(tmp_path / "seccomp.bpf.sha256")],
                           capture_output=True, text=True, check=False)
    assert check.returncode != 0
    unit, show, entries, text = recorded("eperm")
    stdout = next(e for e in entries if e.get("_TRANSPORT") == "stdout")
    kept = [e for e in entries if e.get("_TRANSPORT") != "stdout"
            and "Main process exited" not in e.get("MESSAGE", "")]
    said = [{**stdout, "MESSAGE": line.replace("/usr/bin/sha256sum:", "sha256sum:"),
             "SYSLOG_IDENTIFIER": "sha256sum", "_COMM": "sha256sum"}
            for line in (check.stdout + check.stderr).splitlines()]
    result = explain(unit, show, [*kept, *said], text, "model_backend")
    assert result["fix"].startswith(f"{bpf} is missing or not what was deployed: run the play "
                                    "again")
    assert "kernelfence_components[model_backend]" in result["fix"]
    assert f"the check of its compiled seccomp program before the start failed: {bpf}: FAILED" \
        in result["text"]
    assert not any("sha256sum" in line or "FAILED" in line for line in result["output"])
