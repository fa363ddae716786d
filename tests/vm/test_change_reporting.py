"""A daemon-reload that systemd really refuses, and the next run that owes it (issue 16 item 10).

systemd refuses to reload while /run has less than its 16 MiB safety buffer free; the tests fill
/run to 4 MiB below that, so the refusal is systemd's own, not a stub's.
"""

import copy
import json

import yaml
from conftest import REPO, full, run_playbook

UNIT = "kf-reload-probe.service"
EXAMPLE = REPO / "inventory/example/group_vars/kernelfence/components.yml"
FILL = "/run/kf-reload-fill"
# 4 MiB below the 16 MiB systemd keeps free on /run before it agrees to reload.
FILL_RUN = ("avail=$(df --output=avail -B1 /run | tail -n 1); "
            f"fallocate -l $((avail - 4194304)) {FILL}")
MARKER = "/run/kernelfence-pending/network-policy.reload"


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


def _apply_policy(host, model, tmp_path):
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"kf_test_model": model}))
    proc = run_playbook(host, REPO / "tests/vm/playbooks/network_policy_apply.yml",
                        "-e", f"@{extra}", timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


@full
def test_a_policy_written_but_not_loaded_is_loaded_by_the_next_run(host, tmp_path):
    """The role writes a widened policy, its handler's daemon-reload is refused (/run full), so
    the old table stays loaded; the next run finds the file as wanted and still loads it."""
    model = yaml.safe_load(EXAMPLE.read_text())["kernelfence_components"]
    widened = copy.deepcopy(model)
    next(c for c in widened if c["name"] == "executor")["network"]["egress"].append(
        {"host": "127.0.0.1", "port": 8089})
    try:
        host.run_expect([0], FILL_RUN)
        rc, out = _apply_policy(host, widened, tmp_path)
        host.run(f"rm -f {FILL}")
        assert rc != 0 and "not enough space" in out, out[-4000:]
        assert host.file(MARKER).exists
        assert "8089" not in host.run("nft list table inet kernelfence").stdout  # old table
        rc, out = _apply_policy(host, widened, tmp_path)
        assert rc == 0, out[-4000:]
        assert "8089" in host.run("nft list table inet kernelfence").stdout
        assert not host.file(MARKER).exists
    finally:
        host.run(f"rm -f {FILL}")
        rc, out = _apply_policy(host, model, tmp_path)
        assert rc == 0, out[-4000:]
