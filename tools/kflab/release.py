"""The demo release the lab and the VM scenarios install: cargo-audit, signed, with its SBOM.

Made by the collection's own Python path, so neither cosign nor syft has to be built first:
`cryptography` signs with the test key (ECDSA P-256 over the file's SHA-256, written as the
bundle `cosign sign-blob --bundle --tlog-upload=false` writes), `cyclonedx-python-lib` writes
the SBOM (syft's, when syft is already built), and the collection's verifier
(plugins/module_utils/artifact_verify.py) checks the result before it is published, with the
real cosign as well when it is there.

Run in the controller virtualenv (`./kf` does): `python -m tools.kflab.release sign` or
`python -m tools.kflab.release cosign-key`.

The key has no password and nothing is uploaded anywhere: it exists only for the tests and the
lab, in the cache directory (KF_CACHE/signing).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import REPO, HarnessError, log, sha256_of

sys.path.insert(0, str(REPO / ".collections"))

KEY_FILE = "release-key.pem"  # PKCS#8 EC P-256, the key of record
PUBLIC_KEY = "cosign.pub"
BINARY = "cargo-audit"
BUNDLE = f"{BINARY}.bundle"
SBOM = f"{BINARY}.cdx.json"
SBOM_BUNDLE = f"{SBOM}.bundle"
STAMP = ".signed"


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def signing_key(signing_dir: Path):
    """The release key (made once with `cryptography`, kept 0600 in the cache)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = signing_dir / KEY_FILE
    if not path.exists():
        signing_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log(f"generating the test release key {path}")
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise HarnessError(f"the release key {path} cannot be read ({exc}); remove it to make a "
                           f"new one: rm {path}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise HarnessError(f"the release key {path} is not an EC key; remove it: rm {path}")
    return key


def public_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def sign_bundle(key, data: bytes) -> bytes:
    """The bundle cosign 2 writes for a key signature without a transparency log."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    digest = hashlib.sha256(data).digest()
    signature = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    return json.dumps({"base64Signature": base64.b64encode(signature).decode()}).encode()


def release_sbom(binary: Path, version: str, syft: Path | None) -> tuple[dict, str]:
    from ansible_collections.kernelfence.isolation.plugins.module_utils import sbom

    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    if syft is not None and syft.exists():
        return sbom.syft_sbom(str(syft), str(binary), BINARY, version, digest), "syft"
    return sbom.minimal_sbom(BINARY, version, digest), "cyclonedx-python-lib"


def verify_release(release: Path, cosign: Path | None) -> list[str]:
    """The collection's verifier on the published files: Python always, cosign when built."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils import artifact_verify

    backends = ["python"] + (["cosign"] if cosign is not None and cosign.exists() else [])
    for name, bundle in ((BINARY, BUNDLE), (SBOM, SBOM_BUNDLE)):
        art = artifact_verify.Artifact(component="executor", name=name, src=str(release / name),
                                       key=str(release / PUBLIC_KEY),
                                       bundle=str(release / bundle))
        for backend in backends:
            try:
                artifact_verify.verify_artifact(art, backend, str(cosign) if cosign else None)
            except artifact_verify.VerificationFailed as exc:
                raise HarnessError(f"the signed release does not verify ({backend}): {exc}") \
                    from exc
    return backends


def make_release(binary: Path, version: str, release: Path, signing_dir: Path,
                 syft: Path | None = None, cosign: Path | None = None) -> dict:
    """Copy, sign, describe and verify the release; a release already signed is kept."""
    if not binary.is_file():
        raise HarnessError(f"{binary} is not built yet; run `./kf setup` first")
    key = signing_key(signing_dir)
    pub = public_pem(key)
    data = binary.read_bytes()
    sbom_tool = "syft" if syft is not None and syft.exists() else "cyclonedx-python-lib"
    stamp = sha256_of(data, pub, version.encode(), sbom_tool.encode())
    manifest_path = release / "release.json"
    if (release / STAMP).exists() and (release / STAMP).read_text().strip() == stamp \
            and manifest_path.exists():
        return json.loads(manifest_path.read_text())
    log(f"signing {BINARY} {version} into {release} (Python: cryptography, "
        f"SBOM by {sbom_tool})")
    release.mkdir(parents=True, exist_ok=True)
    (release / STAMP).unlink(missing_ok=True)
    _write_atomic(release / BINARY, data, 0o755)
    _write_atomic(release / PUBLIC_KEY, pub)
    _write_atomic(signing_dir / PUBLIC_KEY, pub)
    _write_atomic(release / BUNDLE, sign_bundle(key, data))
    doc, source = release_sbom(release / BINARY, version, syft)
    from ansible_collections.kernelfence.isolation.plugins.module_utils import sbom

    error = sbom.validation_errors(doc)
    if error:
        raise HarnessError(f"the release SBOM is not valid CycloneDX: {error}")
    sbom_bytes = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    _write_atomic(release / SBOM, sbom_bytes)
    _write_atomic(release / SBOM_BUNDLE, sign_bundle(key, sbom_bytes))
    verified_by = verify_release(release, cosign)
    manifest = {"artifact": BINARY, "version": version,
                "sha256": hashlib.sha256(data).hexdigest(), "signed_by": "cryptography",
                "sbom_source": source, "verified_by": verified_by,
                "files": [BINARY, PUBLIC_KEY, BUNDLE, SBOM, SBOM_BUNDLE]}
    _write_atomic(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
    _write_atomic(release / STAMP, (stamp + "\n").encode())
    return manifest


def cosign_key(signing_dir: Path, cosign: Path) -> Path:
    """cosign.key: the release key imported into cosign's format (empty password), kept in
    step with the key of record, for the VM tests that sign with the real cosign."""
    key = signing_key(signing_dir)
    fingerprint = hashlib.sha256(public_pem(key)).hexdigest()
    marker = signing_dir / "cosign.key.from"
    target = signing_dir / "cosign.key"
    if target.exists() and marker.exists() and marker.read_text().strip() == fingerprint:
        return target
    from cryptography.hazmat.primitives import serialization

    with tempfile.TemporaryDirectory(prefix="kf-import-", dir=signing_dir) as tmp:
        # The key as `openssl ecparam -genkey` writes it (SEC1), the form cosign documents.
        sec1 = Path(tmp) / "release-key.sec1.pem"
        fd = os.open(sec1, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
        env = dict(os.environ, COSIGN_PASSWORD="", HOME=tmp, TUF_ROOT=str(Path(tmp) / "tuf"))
        proc = subprocess.run([str(cosign), "import-key-pair", "--key", str(sec1),
                               "--output-key-prefix",
                               str(Path(tmp) / "cosign")], env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        if proc.returncode != 0:
            raise HarnessError(f"cosign import-key-pair failed: {proc.stderr.strip()[-500:]}")
        os.replace(Path(tmp) / "cosign.key", target)
        os.chmod(target, 0o600)
    _write_atomic(signing_dir / PUBLIC_KEY, public_pem(key))
    marker.write_text(fingerprint + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    from . import setup

    action = (argv if argv is not None else sys.argv[1:] or ["sign"])[0]
    try:
        if action == "sign":
            manifest = make_release(setup.tool_path("cargo-audit"),
                                    setup.CARGO_TOOLS["cargo-audit"], setup.RELEASE,
                                    setup.SIGNING, setup.tool_path("syft"),
                                    setup.tool_path("cosign"))
            log(f"release {setup.RELEASE}: {manifest['artifact']} {manifest['version']}, "
                f"verified by {', '.join(manifest['verified_by'])}")
        elif action == "cosign-key":
            cosign_key(setup.SIGNING, setup.tool_path("cosign"))
        else:
            raise HarnessError(f"unknown action {action!r}: sign or cosign-key")
    except HarnessError as exc:
        print(f"kf: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
