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


class _Recorder:
    """Stands in for AnsibleModule.run_command: records the systemctl calls, all succeed."""

    def __init__(self, rc=0):
        self.calls, self.rc = [], rc

    def run_command(self, argv):
        self.calls.append(argv)
        return (self.rc if argv[1] == "restart" else 0), "", "nft: syntax error"

    def fail_json(self, **kwargs):
        raise AssertionError(kwargs["msg"])


def test_rollback_puts_the_ruleset_back_and_loads_it_before_the_services_start(tmp_path):
    policy = tmp_path / "network-policy.nft"
    policy.write_text("table inet kernelfence { # this run's, breaks the executor\n}\n")
    old = "table inet kernelfence { # the previous, good one\n}\n\n"
    module = _Recorder()
    restored, restarted, errors = ch._rollback(
        module, {"executor"}, [], [{"name": "kf-executor.service", "component": "executor"}],
        {"path": str(policy), "content": old, "mode": "0600",
         "unit": "kf-network-policy.service", "uid": os.getuid(), "gid": os.getgid()})
    assert policy.read_text() == old  # byte for byte, trailing blank line included
    assert policy.stat().st_mode & 0o7777 == 0o600
    assert restored == [str(policy)] and restarted == ["kf-executor.service"] and errors == []
    order = [" ".join(c[1:]) for c in module.calls]
    assert order.index("restart kf-network-policy.service") < order.index(
        "start kf-executor.service"), order
    assert order.index("stop kf-executor.service") < order.index(
        "restart kf-network-policy.service"), order


def test_rollback_without_a_ruleset_change_touches_no_ruleset(tmp_path):
    module = _Recorder()
    assert ch._rollback(module, {"executor"}, [], [], None) == ([], [], [])
    assert module.calls == []


def test_a_ruleset_that_does_not_load_again_is_reported_and_the_services_still_start(tmp_path):
    policy = tmp_path / "network-policy.nft"
    policy.write_text("new\n")
    module = _Recorder(rc=1)
    restored, restarted, errors = ch._rollback(
        module, {"executor"}, [], [{"name": "kf-executor.service", "component": "executor"}],
        {"path": str(policy), "content": "old\n", "mode": "0600",
         "unit": "kf-network-policy.service", "uid": os.getuid(), "gid": os.getgid()})
    assert len(errors) == 1, errors
    assert "kf-network-policy.service did not load" in errors[0]
    assert f"nft -c -f {policy}" in errors[0]
    # The stopped service is not left down because the old policy failed to load.
    assert ["systemctl", "start", "kf-executor.service"] in module.calls
    assert restored == [str(policy)] and restarted == ["kf-executor.service"]


def _recorded_starts():
    """`systemctl show` of three services and the host's clocks read just before it, recorded
    in a Debian 12 (systemd 252) systemd-nspawn machine of bench/fleet_scale.py after site.yml."""
    head, body = (FIX.parent / "debian12" / "started.show").read_text().split("\n", 1)
    real, mono = (float(v) for v in head.split())
    shows = {b["Id"]: b for b in (parse_show(x) for x in body.strip().split("\n\n"))}
    return shows, real, mono


def test_a_service_that_started_in_this_run_gets_the_window_one_that_did_not_is_looked_at_once():
    shows, real, mono = _recorded_starts()
    everyone = sorted(shows)
    # Started about 23-25 s before the recording.
    assert sorted(ch._started_since(shows, real - 30, real, mono)) == everyone
    assert ch._started_since(shows, real - 20, real, mono) == []
    # kf-executor started 24.77 s before, the model backend 24.71 s, advisory-sync 23.40 s: a
    # run that began 23.75 s before (one second of slack) started the last two, not the first.
    assert sorted(ch._started_since(shows, real - 23.75, real, mono)) == [
        "agent-advisory-sync.service", "kf-model_backend.service"]


def test_a_service_that_is_down_or_never_ran_always_gets_the_window():
    shows, real, mono = _recorded_starts()
    down = {**shows["kf-executor.service"], "ActiveState": "activating"}
    never = {**shows["kf-model_backend.service"], "ExecMainStartTimestampMonotonic": "0"}
    assert ch._started_since({"a": down, "b": never}, real - 20, real, mono) == ["a", "b"]


def test_only_a_run_that_changed_and_started_nothing_skips_the_window():
    shows, real, mono = _recorded_starts()
    assert ch._window_seconds(12, False, shows, real - 20, real, mono) == 0  # idempotent re-run
    # A change whose restart came before `since` (a handler flushed earlier in the play), or
    # that restarted nothing (a policy change): the whole window.
    assert ch._window_seconds(12, True, shows, real - 20, real, mono) == 12
    assert ch._window_seconds(12, False, shows, real - 30, real, mono) == 12  # started in the run


def test_a_file_that_cannot_be_put_back_is_reported_and_the_services_still_start(tmp_path):
    module = _Recorder()
    gone = tmp_path / "no-such-dir" / "kf-executor.service"
    restored, restarted, errors = ch._rollback(
        module, {"executor"},
        [{"path": str(gone), "content": "[Service]\n", "component": "executor",
          "unit": "kf-executor.service", "uid": os.getuid(), "gid": os.getgid()}],
        [{"name": "kf-executor.service", "component": "executor"}])
    assert restored == [] and len(errors) == 1 and f"rollback of {gone} failed" in errors[0]
    assert ["systemctl", "start", "kf-executor.service"] in module.calls
    assert restarted == ["kf-executor.service"]
