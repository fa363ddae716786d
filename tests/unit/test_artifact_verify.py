"""The artifact verifier on both paths, against signatures and bundles recorded with the real
cosign v2.6.5 (fixtures/artifacts, see its README): the same artifacts pass, the same bad ones
fail with the same message on the cosign path and on the Python path."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.artifact_verify import (
    Artifact,
    VerificationFailed,
    classify_cosign_failure,
    verify_artifact,
)

FIX = Path(__file__).parent / "fixtures/artifacts"
COSIGN = os.environ.get("KF_COSIGN") or shutil.which("cosign") or str(
    Path(os.environ.get("KF_CACHE", Path.home() / ".cache/kernelfence")) / "tools/bin/cosign")
HAVE_COSIGN = os.access(COSIGN, os.X_OK)
# The cosign path needs the pinned cosign. `./kf test` runs the unit stage only after the pinned
# tools are built, so there it always runs; only a hand-run pytest without the tools skips it.
# cosign 3 (pinned beside cosign 2) as the verifier of the same cosign 2 signatures and bundles.
COSIGN3 = os.environ.get("KF_COSIGN3") or shutil.which("cosign3") or str(
    Path(os.environ.get("KF_CACHE", Path.home() / ".cache/kernelfence")) / "tools/bin/cosign3")
BACKENDS = ["python", pytest.param("cosign", marks=pytest.mark.skipif(
    not HAVE_COSIGN, reason=f"cosign not built yet at {COSIGN}")),
    pytest.param("cosign3", marks=pytest.mark.skipif(
        not os.access(COSIGN3, os.X_OK), reason=f"cosign3 not built yet at {COSIGN3}"))]


def fingerprint(pub: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key((FIX / pub).read_bytes())
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def artifact(tmp_path, src="artifact.bin", **fields):
    """An Artifact whose src is a copy in tmp_path (bad cases modify the copy)."""
    copy = tmp_path / "artifact.bin"
    shutil.copyfile(FIX / src, copy)
    resolved = {k: (str(FIX / v) if k in ("key", "signature", "bundle") and v else v)
                for k, v in fields.items()}
    return Artifact(component="executor", name="tool", src=str(copy), version="1.0", **resolved)


def verify(art, backend):
    if backend == "python":
        return verify_artifact(art, "python")
    return verify_artifact(art, "cosign", {"cosign": COSIGN, "cosign3": COSIGN3}[backend])


GOOD = {
    "detached-signature": {"key": "signer.pub", "signature": "artifact.sig"},
    "cosign-bundle": {"key": "signer.pub", "bundle": "artifact.bundle"},
    "sigstore-bundle": {"key": "signer.pub", "bundle": "artifact.sigstore.json"},
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(GOOD))
def test_good_artifacts_verify(tmp_path, backend, case):
    art = artifact(tmp_path, **GOOD[case])
    evidence = verify(art, backend).as_dict()
    content = (FIX / "artifact.bin").read_bytes()
    assert evidence["sha256"] == hashlib.sha256(content).hexdigest()
    assert evidence["size"] == len(content)
    assert evidence["key_fingerprint"] == fingerprint("signer.pub")
    assert evidence["method"] == "key"
    assert evidence["tool"] == {"python": "cryptography", "cosign": "cosign",
                                "cosign3": "cosign"}[backend]
    if backend == "cosign3":
        assert evidence["tool_version"].startswith("v3.")
    if backend == "cosign":
        recorded = json.loads((FIX / "cosign-version.json").read_text())["gitVersion"]
        assert evidence["tool_version"] == recorded


def tamper(path):
    data = bytearray(Path(path).read_bytes())
    data[40] ^= 0x01  # one bit of one byte
    Path(path).write_bytes(bytes(data))


def truncate(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


# id: (fields, change to the artifact copy, reason, message after "artifact executor/tool: ")
SIG_FAIL = ("signature does not verify: {src} is not signed by key "
            + "{fp} (modified file, other key, or a signature of another file)")
BAD = {
    "tampered-byte": ({"key": "signer.pub", "signature": "artifact.sig"}, tamper,
                      "invalid-signature", SIG_FAIL),
    "tampered-byte-bundle": ({"key": "signer.pub", "bundle": "artifact.bundle"}, tamper,
                             "invalid-signature", SIG_FAIL),
    "truncated-download": ({"key": "signer.pub", "signature": "artifact.sig"}, truncate,
                           "invalid-signature", SIG_FAIL),
    "wrong-key": ({"key": "other.pub", "signature": "artifact.sig"}, None,
                  "invalid-signature", SIG_FAIL.replace("{fp}", "{other_fp}")),
    "wrong-key-bundle": ({"key": "other.pub", "bundle": "artifact.bundle"}, None,
                         "invalid-signature", SIG_FAIL.replace("{fp}", "{other_fp}")),
    "signature-of-another-file": ({"key": "signer.pub", "signature": "other.sig"}, None,
                                  "invalid-signature", SIG_FAIL),
    "cosign-bundle-of-another-file": ({"key": "signer.pub", "bundle": "other.bundle"}, None,
                                      "invalid-signature", SIG_FAIL),
    "sigstore-bundle-of-another-file": (
        {"key": "signer.pub", "bundle": "other.sigstore.json"}, None, "bundle-for-another-file",
        "file does not match the bundle: the bundle signs sha256 {other_sha}, {src} has sha256 "
        "{sha} (modified file, or a bundle of another file)"),
    "missing-signature": ({"key": "signer.pub", "signature": "absent.sig"}, None,
                          "missing-signature",
                          "signature not found: signature '{fix}/absent.sig' does not exist"),
    "missing-bundle": ({"key": "signer.pub", "bundle": "absent.bundle"}, None,
                       "missing-signature",
                       "signature not found: bundle '{fix}/absent.bundle' does not exist"),
    "no-signature-given": ({"key": "signer.pub"}, None, "missing-signature",
                           "signature not found: neither signature nor bundle is given"),
    "pinned-digest-mismatch": ({"key": "signer.pub", "signature": "artifact.sig",
                                "sha256": "0" * 64}, None, "digest-mismatch",
                               "digest mismatch: {src} has sha256 {sha}, the pin is " + "0" * 64),
    "missing-key": ({"key": "absent.pub", "signature": "artifact.sig"}, None, "missing-key",
                    "public key not found: public key '{fix}/absent.pub' does not exist"),
    "signature-not-base64": ({"key": "signer.pub", "signature": "signer.pub"}, None,
                             "bad-signature-file",
                             "signature file is not a cosign signature: {fix}/signer.pub is "
                             "not base64"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_artifacts_fail_with_the_same_reason(tmp_path, backend, case):
    fields, change, reason, message = BAD[case]
    art = artifact(tmp_path, **fields)
    if change:
        change(art.src)
    with pytest.raises(VerificationFailed) as exc:
        verify(art, backend)
    expected = "artifact executor/tool: " + message.format(
        src=art.src, fix=FIX, fp=fingerprint("signer.pub"), other_fp=fingerprint("other.pub"),
        sha=hashlib.sha256(Path(art.src).read_bytes()).hexdigest(),
        other_sha=hashlib.sha256((FIX / "other.bin").read_bytes()).hexdigest())
    assert exc.value.reason == reason
    assert str(exc.value) == expected


def test_missing_artifact(tmp_path):
    art = Artifact(component="executor", name="tool", src=str(tmp_path / "absent"),
                   key=str(FIX / "signer.pub"), signature=str(FIX / "artifact.sig"))
    for backend in ("python", "cosign") if HAVE_COSIGN else ("python",):
        with pytest.raises(VerificationFailed) as exc:
            verify(art, backend)
        assert str(exc.value) == (f"artifact executor/tool: artifact file not found: artifact "
                                  f"'{tmp_path}/absent' does not exist")


@pytest.mark.parametrize("recorded", sorted(p.name for p in FIX.glob("cosign-stderr/*.txt")))
def test_recorded_cosign_failures_map_to_invalid_signature(recorded):
    """cosign's own words for key-based failures (recorded) become the shared reason."""
    art = Artifact(component="executor", name="tool", src="/x/tool", key="/x/k.pub",
                   signature="/x/s")
    exc = classify_cosign_failure(art, (FIX / "cosign-stderr" / recorded).read_text(),
                                  "sha256:ab", None)
    assert exc.reason == "invalid-signature"
    assert "Error:" in exc.tool_output
