"""Keyless verification against a private test trust root (fixtures/keyless, see its README),
on the cosign path and on the sigstore-python path: same verdicts, same messages."""

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.artifact_verify import (
    Artifact,
    VerificationFailed,
    verify_artifact,
)

FIX = Path(__file__).parent / "fixtures/keyless"
COSIGN = os.environ.get("KF_COSIGN") or shutil.which("cosign") or str(
    Path(os.environ.get("KF_CACHE", Path.home() / ".cache/kernelfence")) / "tools/bin/cosign")
# As in test_artifact_verify.py: the cosign path runs wherever the pinned cosign is built.
COSIGN3 = os.environ.get("KF_COSIGN3") or shutil.which("cosign3") or str(
    Path(os.environ.get("KF_CACHE", Path.home() / ".cache/kernelfence")) / "tools/bin/cosign3")
BACKENDS = ["python", pytest.param("cosign", marks=pytest.mark.skipif(
    not os.access(COSIGN, os.X_OK), reason=f"cosign not built yet at {COSIGN}")),
    pytest.param("cosign3", marks=pytest.mark.skipif(
        not os.access(COSIGN3, os.X_OK), reason=f"cosign3 not built yet at {COSIGN3}"))]
IDENTITY = "release-signer@kernelfence.test"
ISSUER = "https://issuer.kernelfence.test"


def keyless(bundle, src=FIX / "artifact.bin", **over):
    fields = {"certificate_identity": IDENTITY, "certificate_oidc_issuer": ISSUER,
              "trusted_root": str(FIX / "trusted_root.json"), **over}
    return Artifact(component="executor", name="tool", src=str(src), bundle=str(bundle),
                    **fields)


def verify(art, backend):
    if backend == "python":
        return verify_artifact(art, "python")
    return verify_artifact(art, "cosign", {"cosign": COSIGN, "cosign3": COSIGN3}[backend])


REGEXP = r"^release-[a-z]+@kernelfence\.test$"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("identity", [
    {"certificate_identity": IDENTITY},
    {"certificate_identity": None, "certificate_identity_regexp": REGEXP}],
    ids=["exact", "regexp"])
def test_good_bundle_verifies(backend, identity):
    evidence = verify(keyless(FIX / "artifact.sigstore.json", **identity), backend).as_dict()
    assert evidence["method"] == "keyless"
    assert evidence["signer_identity"] == IDENTITY and evidence["issuer"] == ISSUER
    assert evidence["tool"] == {"python": "sigstore-python", "cosign": "cosign",
                                "cosign3": "cosign"}[backend]


def corrupt_signature(tmp_path):
    doc = json.loads((FIX / "artifact.sigstore.json").read_text())
    sig = bytearray(base64.b64decode(doc["messageSignature"]["signature"]))
    sig[-3] ^= 0x01
    doc["messageSignature"]["signature"] = base64.b64encode(bytes(sig)).decode()
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(doc))
    return path


def corrupt_log_promise(tmp_path):
    doc = json.loads((FIX / "artifact.sigstore.json").read_text())
    entry = doc["verificationMaterial"]["tlogEntries"][0]
    entry["integratedTime"] = str(int(entry["integratedTime"]) + 1)
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(doc))
    return path


def copy_of(name):
    return lambda tmp_path: FIX / name


BAD = {
    "wrong-identity": (copy_of("wrong-identity.sigstore.json"), {}, "identity-mismatch",
                       "certificate identity does not match: signed by "
                       "'intruder@kernelfence.test', expected 'release-signer@kernelfence.test'"),
    "wrong-identity-regexp": (copy_of("artifact.sigstore.json"),
                              {"certificate_identity": None,
                               "certificate_identity_regexp": "^ci@"}, "identity-mismatch",
                              "certificate identity does not match: signed by "
                              "'release-signer@kernelfence.test', expected '~^ci@'"),
    "wrong-issuer": (copy_of("wrong-issuer.sigstore.json"), {}, "issuer-mismatch",
                     "certificate OIDC issuer does not match: issued by 'https://evil.test', "
                     "expected 'https://issuer.kernelfence.test'"),
    "expected-other-issuer": (copy_of("artifact.sigstore.json"),
                              {"certificate_oidc_issuer": "https://token.actions.example"},
                              "issuer-mismatch",
                              "certificate OIDC issuer does not match: issued by "
                              "'https://issuer.kernelfence.test', expected "
                              "'https://token.actions.example'"),
    "untrusted-ca": (copy_of("untrusted-ca.sigstore.json"), {}, "untrusted-certificate",
                     "certificate does not chain to the trusted root: the bundle's certificate "
                     "(CN=stranger CA,O=kernelfence test) is not issued by a CA of {root}"),
    "bundle-of-another-file": (copy_of("other.sigstore.json"), {}, "bundle-for-another-file",
                               "file does not match the bundle: "),
    "tampered-signature": (corrupt_signature, {}, "invalid-signature",
                           "signature does not verify: {src} signed by "
                           "release-signer@kernelfence.test does not verify against {root} "
                           "(signature, SCT or transparency-log entry)"),
    "tampered-log-entry": (corrupt_log_promise, {}, "invalid-signature",
                           "signature does not verify: {src} signed by "
                           "release-signer@kernelfence.test does not verify against {root} "
                           "(signature, SCT or transparency-log entry)"),
    "missing-trusted-root": (copy_of("artifact.sigstore.json"),
                             {"trusted_root": "/nonexistent/trusted_root.json"},
                             "missing-trusted-root", "trusted root not found: trusted root "
                             "'/nonexistent/trusted_root.json' does not exist"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_bundle_fails_with_the_same_reason(tmp_path, backend, case):
    make, over, reason, message = BAD[case]
    art = keyless(make(tmp_path), **over)
    with pytest.raises(VerificationFailed) as exc:
        verify(art, backend)
    assert exc.value.reason == reason
    assert str(exc.value).startswith(
        "artifact executor/tool: " + message.format(src=art.src, root=art.trusted_root))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tampered_artifact_is_refused(tmp_path, backend):
    copy = tmp_path / "artifact.bin"
    shutil.copyfile(FIX / "artifact.bin", copy)
    copy.write_bytes(copy.read_bytes().replace(b"keyless", b"keyLess"))
    with pytest.raises(VerificationFailed) as exc:
        verify(keyless(FIX / "artifact.sigstore.json", src=copy), backend)
    assert exc.value.reason == "bundle-for-another-file"
