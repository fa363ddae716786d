"""cosign 3's sign-blob bundles (a Sigstore bundle is its default and only sign-blob output) on
both verification paths: Python, and the cosign path with each pinned cosign (2 and 3).

Recorded bundles (fixtures/cosign3, made by the real cosign v3.1.3, see its README) and bundles
the real cosign 3 signs at test time; the cosign 2 fixtures stay covered by
test_artifact_verify.py, where cosign 3 is one more verifier.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.artifact_verify import (
    Artifact,
    VerificationFailed,
    verify_artifact,
)

FIX = Path(__file__).parent / "fixtures/cosign3"
TOOLS = Path(os.environ.get("KF_CACHE", Path.home() / ".cache/kernelfence")) / "tools/bin"
COSIGN = os.environ.get("KF_COSIGN") or shutil.which("cosign") or str(TOOLS / "cosign")
COSIGN3 = os.environ.get("KF_COSIGN3") or shutil.which("cosign3") or str(TOOLS / "cosign3")
HAVE_COSIGN3 = os.access(COSIGN3, os.X_OK)
# As for cosign in test_artifact_verify.py: `./kf test` builds the pinned tools (cosign3
# included) before the unit stage, so these run there; only a hand-run pytest skips them.
NEEDS_COSIGN3 = pytest.mark.skipif(not HAVE_COSIGN3, reason=f"cosign3 not built yet at {COSIGN3}")
BACKENDS = ["python",
            pytest.param("cosign", marks=pytest.mark.skipif(
                not os.access(COSIGN, os.X_OK), reason=f"cosign not built yet at {COSIGN}")),
            pytest.param("cosign3", marks=NEEDS_COSIGN3)]


def verify(art, backend):
    if backend == "python":
        return verify_artifact(art, "python")
    return verify_artifact(art, "cosign", {"cosign": COSIGN, "cosign3": COSIGN3}[backend])


def fingerprint(pub):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(Path(pub).read_bytes())
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def artifact(tmp_path, src=FIX / "artifact.bin", bundle=FIX / "artifact.sigstore.json",
             key=FIX / "signer.pub"):
    copy = tmp_path / "artifact.bin"
    shutil.copyfile(src, copy)
    return Artifact(component="executor", name="tool", src=str(copy), key=str(key),
                    bundle=str(bundle))


def test_recorded_bundle_is_cosign3_default_output():
    """The fixture is what cosign 3 writes without --new-bundle-format: a Sigstore bundle."""
    doc = json.loads((FIX / "artifact.sigstore.json").read_text())
    assert doc["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert json.loads((FIX / "cosign-version.json").read_text())["gitVersion"].startswith("v3.")


@pytest.mark.parametrize("backend", BACKENDS)
def test_recorded_cosign3_bundle_verifies(tmp_path, backend):
    art = artifact(tmp_path)
    evidence = verify(art, backend).as_dict()
    assert evidence["sha256"] == hashlib.sha256((FIX / "artifact.bin").read_bytes()).hexdigest()
    assert evidence["key_fingerprint"] == fingerprint(FIX / "signer.pub")
    assert evidence["tool"] == ("cryptography" if backend == "python" else "cosign")
    if backend == "cosign3":
        assert evidence["tool_version"].startswith("v3.")


def flip_bit(path):
    data = bytearray(Path(path).read_bytes())
    data[10] ^= 0x01
    Path(path).write_bytes(bytes(data))


def other_key(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path = tmp_path / "other.pub"
    path.write_bytes(pem)
    return path


def forged_signature(tmp_path):
    doc = json.loads((FIX / "artifact.sigstore.json").read_text())
    other = json.loads((FIX / "other.sigstore.json").read_text())
    doc["messageSignature"]["signature"] = other["messageSignature"]["signature"]
    path = tmp_path / "forged.sigstore.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_cosign3_bundles_fail_with_the_same_reason(tmp_path, backend):
    art = artifact(tmp_path)
    flip_bit(art.src)
    with pytest.raises(VerificationFailed) as exc:
        verify(art, backend)
    assert exc.value.reason == "bundle-for-another-file"

    art = artifact(tmp_path, bundle=FIX / "other.sigstore.json")
    with pytest.raises(VerificationFailed) as exc:
        verify(art, backend)
    assert exc.value.reason == "bundle-for-another-file"

    wrong = other_key(tmp_path)
    art = artifact(tmp_path, key=wrong)
    with pytest.raises(VerificationFailed) as exc:
        verify(art, backend)
    assert exc.value.reason == "invalid-signature"
    assert str(exc.value) == (f"artifact executor/tool: signature does not verify: {art.src} is "
                              f"not signed by key {fingerprint(wrong)} (modified file, other "
                              "key, or a signature of another file)")

    # The right digest with another file's signature: only the signature check can catch it.
    art = artifact(tmp_path, bundle=forged_signature(tmp_path))
    with pytest.raises(VerificationFailed) as exc:
        verify(art, backend)
    assert exc.value.reason == "invalid-signature"


def cosign3(*argv, cwd):
    env = dict(os.environ, COSIGN_PASSWORD="", HOME=str(cwd), TUF_ROOT=str(cwd / "tuf"))
    env = {k: v for k, v in env.items() if not k.startswith("SIGSTORE_")}
    return subprocess.run([COSIGN3, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=True)


@NEEDS_COSIGN3
def test_bundle_signed_now_by_cosign3_verifies_on_every_path(tmp_path):
    """The real cosign 3 signs here and now (its default bundle, through a signing config with
    no services, offline); every verifier accepts it and refuses a modified copy."""
    cosign3("generate-key-pair", "--output-key-prefix", "signer", cwd=tmp_path)
    cosign3("signing-config", "create", "--out", "signing-config.json", cwd=tmp_path)
    blob = tmp_path / "tool"
    blob.write_bytes(b"\x7fELF a component binary, signed by cosign 3 at test time\n")
    cosign3("sign-blob", "--yes", "--key", "signer.key", "--signing-config",
            "signing-config.json", "--bundle", "tool.sigstore.json", "tool", cwd=tmp_path)
    art = Artifact(component="executor", name="tool", src=str(blob),
                   key=str(tmp_path / "signer.pub"), bundle=str(tmp_path / "tool.sigstore.json"))
    backends = ["python", "cosign3"] + (["cosign"] if os.access(COSIGN, os.X_OK) else [])
    for backend in backends:
        assert verify(art, backend).key_fingerprint == fingerprint(tmp_path / "signer.pub")
    blob.write_bytes(blob.read_bytes() + b"\0")
    for backend in backends:
        with pytest.raises(VerificationFailed) as exc:
            verify(art, backend)
        assert exc.value.reason == "bundle-for-another-file"


def _keyless_tools():
    """make_keyless (the private root) and loopback_sigstore (its Fulcio and Rekor)."""
    keyless = str(Path(__file__).parent / "fixtures/keyless")
    if keyless not in sys.path:
        sys.path.insert(0, keyless)
    import loopback_sigstore
    import make_keyless

    return make_keyless, loopback_sigstore


@pytest.fixture(scope="module")
def cosign3_keyless(tmp_path_factory):
    """A keyless bundle written by the real cosign 3 against a private Fulcio and Rekor on
    loopback, under a generated private trust root."""
    if not HAVE_COSIGN3:
        pytest.skip(f"cosign3 not built yet at {COSIGN3}")
    make_keyless, loopback = _keyless_tools()
    work = tmp_path_factory.mktemp("cosign3-keyless")
    root = make_keyless.make_root("kernelfence test")
    (work / "trusted_root.json").write_text(json.dumps(root["doc"]))
    (work / "tool").write_bytes(b"a component binary, signed keyless by cosign 3\n")
    (work / "token").write_text(loopback.identity_token(make_keyless.IDENTITY,
                                                        make_keyless.ISSUER))
    with loopback.LoopbackSigstore(root) as services:
        service = f"url={services.url},api-version=1,start-time=2025-01-01T00:00:00Z,operator=kf"
        cosign3("signing-config", "create", f"--fulcio={service}", f"--rekor={service}",
                "--rekor-config=ANY", "--out", "signing-config.json", cwd=work)
        cosign3("sign-blob", "--yes", "--identity-token", "token", "--signing-config",
                "signing-config.json", "--trusted-root", "trusted_root.json",
                "--bundle", "tool.sigstore.json", "tool", cwd=work)
        assert services.requests == ["/api/v2/signingCert", "/api/v1/log/entries"]
    return work, root, make_keyless


def keyless_artifact(work, make_keyless, root_file="trusted_root.json", **over):
    fields = {"certificate_identity": make_keyless.IDENTITY,
              "certificate_oidc_issuer": make_keyless.ISSUER,
              "trusted_root": str(work / root_file), **over}
    return Artifact(component="executor", name="tool", src=str(work / "tool"),
                    bundle=str(work / "tool.sigstore.json"), **fields)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyless_bundle_signed_by_cosign3_verifies(cosign3_keyless, backend):
    work, _root, make_keyless = cosign3_keyless
    doc = json.loads((work / "tool.sigstore.json").read_text())
    assert doc["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert "certificate" in doc["verificationMaterial"]
    evidence = verify(keyless_artifact(work, make_keyless), backend)
    assert evidence.method == "keyless"
    assert evidence.signer_identity == make_keyless.IDENTITY
    with pytest.raises(VerificationFailed) as exc:
        verify(keyless_artifact(work, make_keyless, certificate_identity="ci@kernelfence.test"),
               backend)
    assert exc.value.reason == "identity-mismatch"


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosign3_keyless_bundle_under_an_expired_log_key_is_refused(cosign3_keyless, backend):
    work, root, make_keyless = cosign3_keyless
    doc = json.loads(json.dumps(root["doc"]))
    doc["tlogs"][0]["publicKey"]["validFor"] = {"start": "2025-01-01T00:00:00Z",
                                                "end": "2026-01-01T00:00:00Z"}
    (work / "expired-tlog-root.json").write_text(json.dumps(doc))
    with pytest.raises(VerificationFailed) as exc:
        verify(keyless_artifact(work, make_keyless, "expired-tlog-root.json"), backend)
    assert exc.value.reason == "trusted-root-validity"
    assert "tlogs[0] (transparency log https://rekor.kernelfence.test)" in str(exc.value)


def listed_flags(cosign):
    """The flags `verify-blob --help` lists: cosign hides the ones it deprecates."""
    proc = subprocess.run([cosign, "verify-blob", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    return set(re.findall(r"^\s+(--[a-z0-9-]+)=", proc.stdout + proc.stderr, re.MULTILINE))


ARTIFACTS = Path(__file__).parent / "fixtures/artifacts"
KEYLESS = Path(__file__).parent / "fixtures/keyless"
ARGV_CASES = {
    "detached-signature": dict(src=ARTIFACTS / "artifact.bin", key=ARTIFACTS / "signer.pub",
                               signature=ARTIFACTS / "artifact.sig"),
    "cosign2-bundle": dict(src=ARTIFACTS / "artifact.bin", key=ARTIFACTS / "signer.pub",
                           bundle=ARTIFACTS / "artifact.bundle"),
    "cosign3-bundle": dict(src=FIX / "artifact.bin", key=FIX / "signer.pub",
                           bundle=FIX / "artifact.sigstore.json"),
    "keyless": dict(src=KEYLESS / "artifact.bin", bundle=KEYLESS / "artifact.sigstore.json",
                    trusted_root=KEYLESS / "trusted_root.json",
                    certificate_identity="release-signer@kernelfence.test",
                    certificate_oidc_issuer="https://issuer.kernelfence.test"),
}


@NEEDS_COSIGN3
@pytest.mark.parametrize("case", sorted(ARGV_CASES))
def test_cosign3_is_called_without_flags_it_deprecates(tmp_path, case):
    """The real cosign 3 behind a wrapper that records its argv: every flag the verifier passes
    is one cosign 3 lists, except --signature, which has no replacement for a detached
    signature (cosign 3 deprecates detached signatures themselves)."""
    log = tmp_path / "argv.log"
    wrapper = tmp_path / "cosign"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{COSIGN3}" "$@"\n')
    wrapper.chmod(0o755)
    art = Artifact(component="executor", name="tool",
                   **{k: str(v) for k, v in ARGV_CASES[case].items()})
    assert verify_artifact(art, "cosign", str(wrapper)).tool_version.startswith("v3.")
    calls = [line for line in log.read_text().splitlines() if line.startswith("verify-blob")]
    assert len(calls) == 1, calls
    passed = {word.split("=")[0] for word in calls[0].split() if word.startswith("--")}
    unlisted = passed - listed_flags(COSIGN3) - ({"--signature"} if case.startswith("detached")
                                                 else set())
    assert not unlisted, f"cosign 3 deprecates {sorted(unlisted)}: {calls[0]}"
