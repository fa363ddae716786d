"""Resource limits (issue 18): the profile defaults as data, their reasons in the unit and in
the role README, the real templates rendered and checked by the real systemd-analyze, and the
size-bounded mounts (unit names checked against the real systemd-escape)."""

import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.filter.components import FilterModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    FIELDS,
    PROFILE_DEFAULTS,
    field_doc,
    mount_unit,
    normalize_resources,
    storage_mounts,
    systemd_escape_path,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
    parse_verify,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())
TEMPLATES = REPO / "roles/component_unit/templates"


@pytest.fixture(scope="module")
def records():
    return {r["name"]: r for r in normalize_components(EXAMPLE["kernelfence_components"])}


def render_template(name, record, systemd_version):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), trim_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update({f"kernelfence.isolation.{k}": v
                        for k, v in FilterModule().filters().items()})
    return env.get_template(name).render(item=record, ansible_managed="Managed by test",
                                         __component_unit_systemd=systemd_version)


def test_the_readme_spec_carries_every_default_and_its_reason():
    spec = yaml.safe_load((REPO / "roles/component_model/meta/argument_specs.yml").read_text())
    opts = (spec["argument_specs"]["preflight"]["options"]["kernelfence_components"]
            ["options"]["resources"]["options"])
    assert list(opts) == list(FIELDS)
    for field in FIELDS:
        assert opts[field]["description"] == field_doc(field), (
            f"{field}: regenerate the spec from resource_limits.field_doc")
    readme = (REPO / "roles/component_model/README.md").read_text()
    for profile, defaults in PROFILE_DEFAULTS.items():
        for field, (_value, why) in defaults.items():
            assert why in readme, (profile, field)


@pytest.mark.parametrize("version", [252, 257])
def test_the_rendered_units_carry_each_limit_with_its_reason_and_verify(
        records, tmp_path, version):
    """The real template: every limit preceded by its reason, accepted by systemd-analyze."""
    for name in ("orchestrator", "executor", "model_backend"):
        rec = records[name]
        text = render_template("component.service.j2", rec, version)
        lines = text.splitlines()
        for field, (value, why) in PROFILE_DEFAULTS[rec["profile"]].items():
            if value is None or field in ("tmp_size", "state_size", "log_size"):
                continue
            directive = {"memory_low": "MemoryLow", "memory_high": "MemoryHigh",
                         "memory_max": "MemoryMax", "memory_swap_max": "MemorySwapMax",
                         "tasks_max": "TasksMax", "cpu_weight": "CPUWeight",
                         "io_weight": "IOWeight", "limit_nofile": "LimitNOFILE",
                         "oom_score_adjust": "OOMScoreAdjust"}[field]
            at = lines.index(f"{directive}={value}")
            assert lines[at - 1] == f"# resources.{field}: {why}", (name, field)
        assert "LimitCORE=0" in lines and "PrivateTmp=no" in lines
        assert "PrivateTmp=yes" not in lines
        size = PROFILE_DEFAULTS[rec["profile"]]["tmp_size"][0]
        for path in ("/tmp", "/var/tmp", "/dev/shm"):
            assert any(ln.startswith(f"TemporaryFileSystem={path}:") and ln.endswith(
                f"size={size}") for ln in lines), (name, path)
        assert (f"RequiresMountsFor={rec['state_dir']} {rec['log_dir']}") in lines
        if version >= 257 or name == "orchestrator":
            continue
        # systemd-analyze verify of this machine (252) on the 252 rendering: every line known.
        path = tmp_path / f"kf-{name}.service"
        path.write_text(text)
        proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                              capture_output=True, text=True, check=False)
        assert parse_verify(proc.stderr, [str(path)]) == [], proc.stderr


def test_the_dropin_bounds_the_users_unit_too(records):
    text = render_template("component.dropin.j2", records["advisory_sync"], 257)
    assert "[Unit]\n# Its state and log directories" in text
    assert "RequiresMountsFor=/var/lib/kernelfence/advisory_sync " \
           "/var/log/kernelfence/advisory_sync" in text
    assert "# resources.memory_max: a bounded default; set it to the service's need\n" \
           "MemoryMax=256M" in text


def test_a_record_without_resources_renders_as_before(records):
    """Records built by hand (older callers) keep PrivateTmp=yes and get no limits."""
    bare = {k: v for k, v in records["executor"].items() if k != "resources"}
    text = render_template("component.service.j2", bare, 257)
    assert "PrivateTmp=yes" in text and "MemoryMax" not in text
    assert "RequiresMountsFor" not in text


def test_unit_names_match_the_real_systemd_escape():
    paths = ["/var/lib/kernelfence/model_backend", "/srv/kernelfence/a-b.c/.x",
             "/var/log/kernelfence/executor", "/run/kernelfence/cache dir", "/srv/ü"]
    real = subprocess.run(["systemd-escape", "--path", *paths], capture_output=True,
                          text=True, check=True).stdout.split()
    # systemd-escape prints one name per argument, separated by spaces.
    assert [systemd_escape_path(p) for p in paths] == real


def test_storage_mounts_per_writable_path(records, tmp_path):
    rec = normalize_components([{"name": "executor", "profile": "executor",
                                 "state_paths": ["/srv/kernelfence/cache",
                                                 "/run/kernelfence/spool"]}])[0]
    mounts = {m["path"]: m for m in storage_mounts(rec, "/var/lib/kernelfence-storage")}
    assert set(mounts) == {"/var/lib/kernelfence/executor", "/srv/kernelfence/cache",
                           "/run/kernelfence/spool", "/var/log/kernelfence/executor"}
    state = mounts["/var/lib/kernelfence/executor"]
    assert state == {"component": "executor", "path": "/var/lib/kernelfence/executor",
                     "size": "128M", "bytes": 128 * 1024 ** 2,
                     "unit": "var-lib-kernelfence-executor.mount", "type": "ext4",
                     "image": "/var/lib/kernelfence-storage/var-lib-kernelfence-executor.ext4",
                     "owner": "kf-executor", "group": "kf-executor", "mode": "0700"}
    assert mounts["/var/log/kernelfence/executor"]["size"] == "32M"
    assert mounts["/var/log/kernelfence/executor"]["mode"] == "0750"
    assert mounts["/run/kernelfence/spool"]["type"] == "tmpfs"
    assert mounts["/run/kernelfence/spool"]["image"] is None
    # Each unit passes the real systemd-analyze verify (name matches Where=, options parse).
    for mount in mounts.values():
        path = tmp_path / mount["unit"]
        path.write_text(mount_unit(mount))
        proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                              capture_output=True, text=True, check=False)
        assert "Unknown key" not in proc.stderr and "ignoring" not in proc.stderr, proc.stderr
        assert "Where= setting doesn't match unit name" not in proc.stderr, proc.stderr
    unbounded = normalize_components([{"name": "executor", "profile": "executor",
                                       "resources": {"state_size": None, "log_size": None}}])
    assert storage_mounts(unbounded[0], "/x") == []


def test_where_the_mount_unit_name_is_wrong_systemd_says_so(tmp_path):
    """Control for the check above: a .mount unit whose name does not match Where= is refused
    by the same systemd-analyze call."""
    mount = storage_mounts(normalize_components([{"name": "executor",
                                                  "profile": "executor"}])[0], "/x")[0]
    path = tmp_path / "var-lib-other.mount"
    path.write_text(mount_unit(mount))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 or "doesn't match" in proc.stderr, proc.stderr


def test_defaults_fit_a_2_gib_host_and_every_profile_validates():
    gib2 = 2 * 1024 ** 3
    for profile in PROFILE_DEFAULTS:
        values = normalize_resources(profile, {})
        assert values["memory_max"].endswith("M")
        assert int(values["memory_max"][:-1]) * 1024 ** 2 < gib2
    executor = normalize_resources("executor", {})
    backend = normalize_resources("model_backend", {})
    # Executor first, model backend and orchestrator last.
    assert int(executor["oom_score_adjust"]) > 0 > int(backend["oom_score_adjust"])
    assert int(backend["cpu_weight"]) > int(executor["cpu_weight"])


def test_a_tmpfs_bound_belongs_to_the_component_from_its_mount(tmp_path):
    """A size-bounded path under /run is a tmpfs the mount unit recreates at every boot: its
    owner must be in the unit's options, not only set by the play (review finding)."""
    record = normalize_components([{"name": "executor", "profile": "executor",
                                    "state_paths": ["/run/kernelfence/spool"]}])[0]
    mount = next(m for m in storage_mounts(record, "/x") if m["type"] == "tmpfs")
    text = mount_unit(mount, 998, 997)
    options = next(line for line in text.splitlines() if line.startswith("Options="))
    assert ",uid=998,gid=997," in options, options
    assert "uid=" not in mount_unit(mount)  # control: without the ids, no owner is claimed
    path = tmp_path / mount["unit"]
    path.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                          capture_output=True, text=True, check=False)
    assert "ignoring" not in proc.stderr, proc.stderr
