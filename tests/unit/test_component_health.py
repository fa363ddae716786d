"""The rollback and state logic of the component_health module, on real files and on
`systemctl show` output recorded in a Debian 13 guest."""

import os
from pathlib import Path

from ansible_collections.kernelfence.isolation.plugins.module_utils.unit_failure import (
    parse_show,
)
from ansible_collections.kernelfence.isolation.plugins.modules import component_health as ch

FIX = Path(__file__).parent / "fixtures/unit_failure/debian13"


def test_a_failed_or_restarting_service_is_unhealthy():
    failed = parse_show((FIX / "namespace.show").read_text())
    healthy = {**failed, "ActiveState": "active", "SubState": "running"}
    assert ch._state_failures({"u": healthy}, {"u": healthy}) == {}
    assert ch._state_failures({"u": healthy}, {"u": failed}) == {"u": "failed/failed"}
    moved = {**healthy, "NRestarts": "3"}
    assert ch._state_failures({"u": healthy}, {"u": moved}) == {"u": "restarted 0 -> 3 times"}


def test_restore_puts_back_content_mode_and_owner(tmp_path):
    unit = tmp_path / "kf-executor.service"
    unit.write_text("[Service]\nInaccessiblePaths=/srv/x\n")
    os.chmod(unit, 0o600)
    ch._restore_file({"path": str(unit), "content": "[Service]\n", "mode": "0o644",
                      "uid": os.getuid(), "gid": os.getgid()})
    assert unit.read_text() == "[Service]\n"
    assert unit.stat().st_mode & 0o7777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["kf-executor.service"]  # no temp file left


def test_restore_removes_a_file_this_run_created(tmp_path):
    new = tmp_path / "kf-reporter.service"
    new.write_text("[Service]\n")
    ch._restore_file({"path": str(new), "content": None})
    assert not new.exists()
    ch._restore_file({"path": str(new), "content": None})  # already gone: nothing to do


def test_restore_points_a_binary_link_back_at_the_previous_version(tmp_path):
    for version in ("0.22.2-aaaa", "0.22.3-bbbb"):
        (tmp_path / version).mkdir()
    os.symlink("0.22.3-bbbb", tmp_path / "current")
    ch._restore_file({"path": str(tmp_path / "current"), "link": "0.22.2-aaaa"})
    assert os.readlink(tmp_path / "current") == "0.22.2-aaaa"


class _NoFail:
    def fail_json(self, **kwargs):
        raise AssertionError(kwargs["msg"])


def test_services_get_their_probe_socket_path():
    units = [{"name": "kf-model_backend.socket", "component": "model_backend"},
             {"name": "kf-model_backend.service", "component": "model_backend", "content": "x"},
             {"name": "agent-advisory-sync.service", "component": "advisory_sync"}]
    comps = [{"name": "model_backend", "sockets": [
        {"name": "model.sock", "path": "/run/kernelfence/model_backend/model.sock"}]},
        {"name": "advisory_sync", "sockets": []}]
    probes = {"model_backend": {"socket": "model.sock", "request": '{"prompt": "x"}',
                                "expect": "answer"}}
    got = ch._services(_NoFail(), units, comps, probes)
    assert [s["name"] for s in got] == ["kf-model_backend.service", "agent-advisory-sync.service"]
    assert got[0]["probe"] == {"socket": "/run/kernelfence/model_backend/model.sock",
                               "request": '{"prompt": "x"}', "expect": "answer"}
    assert got[1]["probe"] is None


def test_a_probe_on_a_socket_the_component_does_not_have_is_refused():
    import pytest
    units = [{"name": "kf-executor.service", "component": "executor"}]
    comps = [{"name": "executor", "sockets": [{"name": "jobs.sock", "path": "/run/j.sock"}]}]
    with pytest.raises(AssertionError, match=r"component_unit_health_probes\[executor\]: "
                                             r"'job.sock' is not a socket of executor"):
        ch._services(_NoFail(), units, comps,
                     {"executor": {"socket": "job.sock", "request": "{}", "expect": "report"}})
