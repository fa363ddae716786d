"""The two tiers of VM checks (tests/vm/conftest.py): what CI's core set keeps and what only the
full suite runs, read from pytest's own collection of tests/vm."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Collecting tests/vm needs its pytest plugin; ./kf test always installs it.
pytest.importorskip("testinfra", reason="the VM checks need pytest-testinfra (./kf test)")


def collect(suite):
    env = dict(os.environ, KF_VM_SUITE=suite)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "--hosts=local://",
         "-p", "no:cacheprovider", "tests/vm"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False)
    return proc, [line for line in proc.stdout.splitlines() if "::" in line]


@pytest.fixture(scope="module")
def tiers():
    core_proc, core = collect("core")
    full_proc, full = collect("full")
    assert core_proc.returncode == 0, core_proc.stdout + core_proc.stderr
    assert full_proc.returncode == 0, full_proc.stdout + full_proc.stderr
    return core, full, core_proc.stdout


def test_core_is_a_strict_subset_and_reports_the_rest_as_deselected(tiers):
    core, full, output = tiers
    assert set(core) < set(full)
    assert f"{len(core)}/{len(full)} tests collected ({len(full) - len(core)} deselected)" in output


def test_core_keeps_every_live_isolation_check_and_the_attack_suite(tiers):
    core, full = tiers[:2]
    for module in ("test_attack", "test_components", "test_identity", "test_dropin",
                   "test_isolation_modules"):
        in_full = [t for t in full if f"/{module}.py::" in t]
        assert in_full and all(t in core for t in in_full), module


def test_core_keeps_the_refusals_and_leaves_the_long_runs_to_full(tiers):
    core, full = tiers[:2]
    for name in ("test_bad_input.py::", "test_network_policy.py::test_bad_input_fails"):
        in_full = [t for t in full if name in t]
        assert len(in_full) >= 4 and all(t in core for t in in_full), name
    bad_artifacts = [t for t in core if "test_verified_binary.py::test_bad_artifact_fails" in t]
    assert len(bad_artifacts) == 2, bad_artifacts  # one per verification path
    assert {t.rsplit("-", 1)[1].rstrip("]") for t in bad_artifacts} == {"cosign", "python"}
    for long_run in ("test_rollout.py::", "after_reboot", "test_upgrade_keeps_previous",
                     "test_keyless_artifact_installs", "test_role_twice_over_the_same_connection"):
        assert not [t for t in core if long_run in t], long_run


def test_an_unknown_tier_is_refused_by_name():
    proc, collected = collect("most")
    assert proc.returncode != 0 and not collected
    assert "KF_VM_SUITE='most': use 'core' or 'full'" in proc.stdout + proc.stderr
