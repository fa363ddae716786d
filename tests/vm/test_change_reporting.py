"""A daemon-reload that systemd really refuses, and the next run that owes it (issue 16 item 10).

systemd refuses to reload while /run has less than its 16 MiB safety buffer free; the playbook
fills /run to 4 MiB below that, so the refusal is systemd's own, not a stub's.
"""

import json

from conftest import REPO, run_playbook

UNIT = "kf-reload-probe.service"


def test_a_refused_daemon_reload_reports_changed_and_is_retried(host, tmp_path):
    out = tmp_path / "result.json"
    proc = run_playbook(host, REPO / "tests/vm/playbooks/daemon_reload_retry.yml",
                        "-e", f"kf_result_file={out}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    refused, retried, settled = result["refused"], result["retried"], result["settled"]
    print(f"REFUSED {host.backend.get_hostname()} {refused['msg']}")
    assert refused["failed"] is True
    assert refused["changed"] is True
    assert refused["written"] == [f"/etc/systemd/system/{UNIT}"]
    assert "not enough space" in refused["msg"], refused["msg"]
    # Between the runs systemd still runs the unit as it was: the new file is not loaded.
    assert result["stale"] == "yes"
    assert retried["changed"] is True
    assert retried["changed_units"] == [UNIT]
    assert retried["restart_needed"] == [UNIT]
    assert result["fresh"] == "no"
    assert settled["changed"] is False
    assert settled["restart_needed"] == []
