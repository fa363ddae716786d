"""Verified binaries in the VM: the signed cargo-audit is installed root-owned with its SBOM,
evidence and inventory; every bad artifact fails the real play with its reason and leaves the
host's binary and running service as they were; an upgrade keeps the previous version."""

import copy
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import full, run_playbook

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(__file__).with_name("verified_binary.yml")
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())
CACHE = Path(os.environ.get("KF_CACHE", Path.home() / ".cache/kernelfence"))
RELEASE = Path(os.environ.get("KF_RELEASE_DIR", CACHE / "signing/release"))
SIGNING_KEY = Path(os.environ.get("KF_SIGNING_DIR", CACHE / "signing")) / "cosign.key"
COSIGN = shutil.which("cosign") or str(CACHE / "tools/bin/cosign")
OTHER_KEY = REPO / "tests/unit/fixtures/artifacts/other.pub"
KEYLESS = REPO / "tests/unit/fixtures/keyless"
BIN = "/opt/kernelfence/bin/executor/cargo-audit"
LABEL = "executor/cargo-audit"


def release_sha256():
    return hashlib.sha256((RELEASE / "cargo-audit").read_bytes()).hexdigest()


def good_artifact():
    return {"name": "cargo-audit", "version": "0.22.2", "src": str(RELEASE / "cargo-audit"),
            "key": str(RELEASE / "cosign.pub"), "bundle": str(RELEASE / "cargo-audit.bundle")}


def sign(path, bundle):
    env = dict(os.environ, COSIGN_PASSWORD="", TUF_ROOT=str(Path(bundle).parent / "tuf"))
    subprocess.run([COSIGN, "sign-blob", "--yes", "--key", str(SIGNING_KEY),
                    "--tlog-upload=false", "--bundle", str(bundle), str(path)],
                   check=True, capture_output=True, env=env, timeout=120)


def run_role(host, tmp_path, artifact, backend="auto", env_extra=None):
    model = copy.deepcopy(EXAMPLE["kernelfence_components"])
    for comp in model:
        comp.pop("artifacts", None)
        if comp["name"] == "executor":
            comp["artifacts"] = artifact if isinstance(artifact, list) else [artifact]
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps({"kernelfence_components": model,
                                 "verified_binary_backend": backend}))
    proc = run_playbook(host, PLAYBOOK, "-e", f"@{extra}", env_extra=env_extra)
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def host_state(host):
    """What must not change when an artifact is refused."""
    return {
        "current": host.run("readlink %s/current", BIN).stdout.strip(),
        "digest": host.run("sha256sum %s/current/cargo-audit", BIN).stdout.split()[:1],
        "tree": host.run("find %s -printf '%%p %%y %%m %%U\\n'", BIN).stdout,
        "active": host.run("systemctl is-active kf-executor").stdout.strip(),
        "pid": host.run("systemctl show -p MainPID --value kf-executor").stdout.strip(),
    }


def test_signed_cargo_audit_is_installed_root_owned(host):
    current = host.file(f"{BIN}/current/cargo-audit")
    assert current.exists and current.user == "root" and current.group == "root"
    assert current.mode == 0o755
    assert current.sha256sum == release_sha256()
    # The only cargo-audit on the host is the verified one (the demo executor runs it).
    assert not host.file("/usr/local/bin/cargo-audit").exists
    for path in ("/opt/kernelfence/bin", "/opt/kernelfence/bin/executor", BIN,
                 host.run("readlink -f %s/current", BIN).stdout.strip()):
        node = host.file(path)
        assert node.user == "root" and node.mode == 0o755, path
    # From outside: the executor's user cannot replace its own binary (control: root can).
    probe = ("import errno\ntry:\n    open(%r, 'ab')\n    print('OK')\n"
             "except OSError as e:\n    print(errno.errorcode[e.errno])")
    target = f"{BIN}/current/cargo-audit"
    as_executor = host.run("runuser -u kf-executor -- python3 -c %s", probe % target)
    assert as_executor.stdout.strip() == "EACCES"
    assert host.run("python3 -c %s", probe % target).stdout.strip() == "OK"


def test_sbom_evidence_and_inventory(host):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    sbom = json.loads(host.file(f"{BIN}/current/sbom.cdx.json").content_string)
    version = SchemaVersion.from_version(sbom["specVersion"])
    assert JsonStrictValidator(version).validate_str(json.dumps(sbom)) is None
    subject = sbom["metadata"]["component"]
    assert {"alg": "SHA-256", "content": release_sha256()} in subject["hashes"]
    evidence = json.loads(host.file(f"{BIN}/current/evidence.json").content_string)
    assert evidence["artifact"] == LABEL and evidence["sha256"] == release_sha256()
    assert evidence["method"] == "key" and evidence["key_fingerprint"].startswith("sha256:")
    assert evidence["tool"] in ("cosign", "cryptography") and evidence["tool_version"]
    assert evidence["verified_at"]
    inventory = json.loads(host.file("/opt/kernelfence/bin/inventory.json").content_string)
    entries = {(b["component"], b["name"]): b for b in inventory["binaries"]}
    assert entries[("executor", "cargo-audit")]["sha256"] == release_sha256()
    assert entries[("executor", "cargo-audit")]["path"] == f"{BIN}/current/cargo-audit"


def _tampered(tmp_path):
    data = bytearray((RELEASE / "cargo-audit").read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "cargo-audit").write_bytes(bytes(data))
    return {**good_artifact(), "src": str(tmp_path / "cargo-audit")}


def _truncated(tmp_path):
    data = (RELEASE / "cargo-audit").read_bytes()
    (tmp_path / "cargo-audit").write_bytes(data[: len(data) // 3])
    return {**good_artifact(), "src": str(tmp_path / "cargo-audit")}


def _wrong_key(tmp_path):
    return {**good_artifact(), "key": str(OTHER_KEY)}


def _bundle_of_another_file(tmp_path):
    other = tmp_path / "other-file"
    other.write_bytes(b"a different file, signed by the same test key\n")
    sign(other, tmp_path / "other.bundle")
    return {**good_artifact(), "bundle": str(tmp_path / "other.bundle")}


def _missing_signature(tmp_path):
    return {**good_artifact(), "bundle": str(tmp_path / "cargo-audit.bundle")}


def _wrong_pin(tmp_path):
    return {**good_artifact(), "sha256": "0" * 64}


def _keyless(bundle="artifact.sigstore.json", **over):
    """The keyless fixture (private test trust root, see tests/unit/fixtures/keyless)."""
    return {"name": "cargo-audit", "version": "keyless", "src": str(KEYLESS / "artifact.bin"),
            "bundle": str(KEYLESS / bundle), "trusted_root": str(KEYLESS / "trusted_root.json"),
            "certificate_identity": "release-signer@kernelfence.test",
            "certificate_oidc_issuer": "https://issuer.kernelfence.test", **over}


BAD = {
    "keyless-wrong-identity": (lambda _t: _keyless("wrong-identity.sigstore.json"),
                               "certificate identity does not match: "),
    "keyless-wrong-issuer": (lambda _t: _keyless("wrong-issuer.sigstore.json"),
                             "certificate OIDC issuer does not match: "),
    "keyless-untrusted-ca": (lambda _t: _keyless("untrusted-ca.sigstore.json"),
                             "certificate does not chain to the trusted root: "),
    "keyless-bundle-of-another-file": (lambda _t: _keyless("other.sigstore.json"),
                                       "file does not match the bundle: "),
    "tampered-byte": (_tampered, "signature does not verify: "),
    "truncated-download": (_truncated, "signature does not verify: "),
    "wrong-key": (_wrong_key, "signature does not verify: "),
    "bundle-of-another-file": (_bundle_of_another_file, "signature does not verify: "),
    "missing-signature": (_missing_signature, "signature not found: bundle "),
    "digest-pin-mismatch": (_wrong_pin, "digest mismatch: "),
}


# CI (core) runs one refusal on each verification path; the full suite runs the whole matrix
# (every case is also a unit test against the real cosign).
CORE_BAD = {("tampered-byte", "cosign"), ("keyless-wrong-identity", "python")}


@pytest.mark.parametrize(("case", "backend"), [
    (case, backend) if (case, backend) in CORE_BAD else pytest.param(case, backend, marks=full)
    for case in sorted(BAD) for backend in ("cosign", "python")])
def test_bad_artifact_fails_and_host_keeps_its_binary(host, tmp_path, case, backend):
    make, reason = BAD[case]
    before = host_state(host)
    assert before["active"] == "active" and before["digest"] == [release_sha256()]  # control
    rc, output = run_role(host, tmp_path, make(tmp_path), backend)
    assert rc == 2, output[-3000:]
    assert f"artifact {LABEL}: {reason}" in output, output[-3000:]
    assert host_state(host) == before


def test_digest_mismatch_on_the_host_changes_nothing(host, tmp_path):
    """A valid new version whose copy is corrupted in transit (test hook): the host refuses it."""
    before = host_state(host)
    assert before["active"] == "active"
    artifact = {**good_artifact(), "version": "0.22.2-transit"}
    rc, output = run_role(host, tmp_path, artifact,
                          env_extra={"KF_TEST_CORRUPT_STAGED_COPY": LABEL})
    assert rc == 2, output[-3000:]
    assert (f"artifact {LABEL}: digest mismatch: the copy on the host has sha256 "
            in output), output[-3000:]
    assert f"the verified pin is {release_sha256()}" in output
    assert host_state(host) == before


@full
def test_upgrade_keeps_previous_restarts_service_and_rolls_back(host, tmp_path):
    before = host_state(host)
    upgraded = {**good_artifact(), "version": "0.22.2-upgrade"}
    rc, output = run_role(host, tmp_path, upgraded)
    assert rc == 0, output[-3000:]
    after = host_state(host)
    assert after["current"] == f"0.22.2-upgrade-{release_sha256()[:12]}"
    assert host.run("readlink %s/previous", BIN).stdout.strip() == before["current"]
    # The handler restarted the service on the new binary.
    assert after["active"] == "active" and after["pid"] != before["pid"]
    # Rolling back: the previous version is still on disk, nothing is copied again.
    rc, output = run_role(host, tmp_path, good_artifact())
    assert rc == 0, output[-3000:]
    assert host.run("readlink %s/current", BIN).stdout.strip() == before["current"]
    assert host.file(f"{BIN}/current/cargo-audit").sha256sum == release_sha256()
    # And a run with nothing to do changes nothing.
    rc, output = run_role(host, tmp_path, good_artifact())
    assert rc == 0 and "changed=0" in output, output[-3000:]


@full
def test_keyless_artifact_installs_with_signer_identity(host, tmp_path):
    keyless = {**_keyless(), "name": "keyless-fixture", "version": "1"}
    rc, output = run_role(host, tmp_path, [good_artifact(), keyless])
    assert rc == 0, output[-3000:]
    base = "/opt/kernelfence/bin/executor/keyless-fixture/current"
    assert host.file(f"{base}/keyless-fixture").sha256sum == hashlib.sha256(
        (KEYLESS / "artifact.bin").read_bytes()).hexdigest()
    evidence = json.loads(host.file(f"{base}/evidence.json").content_string)
    assert evidence["method"] == "keyless"
    assert evidence["signer_identity"] == "release-signer@kernelfence.test"
    assert evidence["issuer"] == "https://issuer.kernelfence.test"
    # Back to the example's artifacts (the inventory lists what the model declares).
    rc, output = run_role(host, tmp_path, good_artifact())
    assert rc == 0, output[-3000:]
