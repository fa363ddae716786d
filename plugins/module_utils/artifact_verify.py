# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sigstore verification of component artifacts, with the same verdicts on two paths.

The real ``cosign verify-blob`` is used when it is on the controller; otherwise the signature is
checked in Python (``cryptography`` for a cosign public key, ``sigstore`` for a keyless bundle).
Everything that is not cryptography (files present, digest pins, which file a bundle names) is
checked here first, in Python, on both paths, so both paths fail with the same reason and the
same message; the tool only decides whether the signature holds.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

# Why an artifact was refused. The message text is shared by both verification paths.
REASONS = {
    "missing-artifact": "artifact file not found",
    "missing-signature": "signature not found",
    "missing-key": "public key not found",
    "bad-key": "public key cannot be read",
    "bad-signature-file": "signature file is not a cosign signature",
    "bad-bundle": "bundle cannot be read",
    "digest-mismatch": "digest mismatch",
    "bundle-for-another-file": "file does not match the bundle",
    "invalid-signature": "signature does not verify",
    "identity-mismatch": "certificate identity does not match",
    "issuer-mismatch": "certificate OIDC issuer does not match",
    "untrusted-certificate": "certificate does not chain to the trusted root",
    "missing-trusted-root": "trusted root not found",
    "missing-identity": "certificate identity not given",
    "bad-identity-regexp": "certificate identity regexp refused",
    "missing-issuer": "certificate OIDC issuer not given",
    "conflicting-inputs": "inputs contradict each other",
    "bad-trusted-root": "trusted root cannot be used",
    "client-trust-config": "a client trust config is not a trusted root",
    "untrusted-log": "transparency log not in the trusted root",
    "untrusted-ct-log": "CT log not in the trusted root",
    "trusted-root-validity": "trusted root entry not valid at the signing time",
    "tool-error": "verification tool failed",
}
KEYLESS_FIELDS = ("certificate_identity", "certificate_identity_regexp",
                  "certificate_oidc_issuer", "trusted_root")

COSIGN_BUNDLE_MEDIA_PREFIX = "application/vnd.dev.sigstore.bundle"
_CHUNK = 1 << 20


class VerificationFailed(Exception):
    """An artifact was refused; the message names the artifact, the reason and the detail."""

    def __init__(self, label: str, reason: str, detail: str, tool_output: str = "") -> None:
        self.label = label
        self.reason = reason
        self.detail = detail
        self.tool_output = tool_output
        super().__init__(f"artifact {label}: {REASONS[reason]}: {detail}")


@dataclass(frozen=True)
class Artifact:
    """One signed file of a component, as the component model declares it."""

    component: str
    name: str
    src: str
    version: str | None = None
    key: str | None = None
    signature: str | None = None
    bundle: str | None = None
    certificate_identity: str | None = None
    certificate_identity_regexp: str | None = None
    certificate_oidc_issuer: str | None = None
    trusted_root: str | None = None
    sha256: str | None = None

    @property
    def label(self) -> str:
        return f"{self.component}/{self.name}"

    @property
    def keyless(self) -> bool:
        return not self.key

    @classmethod
    def from_dict(cls, data: dict) -> Artifact:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: (str(v) if v is not None else None)
                      for k, v in data.items() if k in known})


def _given(value: object) -> bool:
    return value is not None and str(value).strip() != ""


# Identities any signer of a public trusted root can obtain, none naming a particular signer: a
# pattern that matches one of them would accept them all (".+", ".", "@", "[\\s\\S]+").
ANY_SIGNER_PROBES = ("x", "attacker@evil.invalid",
                     "https://evil.invalid/attacker/repo/.github/workflows/x.yml@refs/heads/x")


def identity_regexp_problem(pattern: str) -> str | None:
    """Why an identity regular expression cannot stand for a signer, or None when it can."""
    fix = ("give the exact identity as certificate_identity, or an anchored expression that "
           "names the signer, such as ^release@example\\.com$")
    if pattern == "":
        return f"empty; an empty regular expression matches every signer of the trusted root; {fix}"
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return f"{pattern!r} is not a regular expression ({exc}); fix the expression"
    if compiled.search("") is not None:
        # search() semantics, as cosign and the Python path match: a pattern that matches the
        # empty string matches inside every identity.
        return (f"{pattern!r} matches an empty identity, so it matches every signer of the "
                f"trusted root; {fix}")
    probe = next((p for p in ANY_SIGNER_PROBES if compiled.search(p)), None)
    if probe is not None:
        return (f"{pattern!r} matches {probe!r}, an identity that names no particular signer, "
                f"so it matches any signer of the trusted root; {fix}")
    if not pattern.startswith(("^", "\\A")):
        # Unanchored, it matches inside any identity that contains it (an attacker's e-mail
        # address or workflow path can), as cosign and the Python path both search.
        return (f"{pattern!r} is not anchored at the start (^), so it matches inside any "
                f"identity that contains it; {fix}")
    return None


def input_problems(fields: Mapping[str, object]) -> list[tuple[str, str, str]]:
    """(reason, option, what is wrong and the fix) for each input of one artifact that is
    missing or would admit any signer.

    Shared by the module's argument checks (which name the option) and the verifier itself
    (which refuses the artifact), so a direct call fails the same way the task does.
    """
    problems: list[tuple[str, str, str]] = []
    if _given(fields.get("key")):
        for option in KEYLESS_FIELDS:
            if fields.get(option) is not None:
                problems.append((
                    "conflicting-inputs", option,
                    "given with key; a key makes the verification key-based and the keyless "
                    "fields would be ignored; give key or certificate_identity (or "
                    "certificate_identity_regexp), certificate_oidc_issuer and trusted_root, "
                    "not both"))
        return problems
    identity = fields.get("certificate_identity")
    regexp = fields.get("certificate_identity_regexp")
    if identity is not None and regexp is not None:
        problems.append(("conflicting-inputs", "certificate_identity_regexp",
                         "given with certificate_identity; give one of them"))
    elif regexp is not None:
        problem = identity_regexp_problem(str(regexp))
        if problem:
            problems.append(("bad-identity-regexp", "certificate_identity_regexp", problem))
    elif not _given(identity):
        state = "missing" if identity is None else "empty"
        problems.append((
            "missing-identity", "certificate_identity",
            f"{state}; keyless verification (no key) needs the signer identity the "
            "certificate must name: give certificate_identity (exact, e.g. "
            "release@example.com) or certificate_identity_regexp"))
    if not _given(fields.get("certificate_oidc_issuer")):
        state = "missing" if fields.get("certificate_oidc_issuer") is None else "empty"
        problems.append((
            "missing-issuer", "certificate_oidc_issuer",
            f"{state}; keyless verification needs the OIDC issuer URL the certificate must "
            "name (e.g. https://token.actions.githubusercontent.com)"))
    if not _given(fields.get("trusted_root")):
        problems.append((
            "missing-trusted-root", "trusted_root",
            "missing; keyless verification needs the path of the Sigstore trusted root "
            "(trusted_root.json: the CA, the transparency log and the CT log keys)"))
    if not _given(fields.get("bundle")):
        problems.append(("missing-signature", "bundle",
                         "missing; keyless verification needs the Sigstore bundle "
                         "(cosign sign-blob --bundle)"))
    return problems


def artifact_argument_errors(artifacts: object, option: str = "artifacts") -> list[str]:
    """The module's own checks of its artifacts option, one message per problem, each naming
    the option (artifacts[N].field), the artifact and the fix."""
    if not isinstance(artifacts, list):
        return [f"{option}: must be a list of artifacts"]
    errors = []
    for index, raw in enumerate(artifacts):
        where = f"{option}[{index}]"
        if not isinstance(raw, Mapping):
            errors.append(f"{where}: must be a dict (component, name, src, ...), "
                          f"got {type(raw).__name__}")
            continue
        label = f"{raw.get('component')}/{raw.get('name')}"
        for required in ("component", "name", "src"):
            if not _given(raw.get(required)):
                errors.append(f"{where}.{required} ({label}): missing; every artifact needs "
                              "component, name and src")
        errors.extend(f"{where}.{name} ({label}): {detail}"
                      for _reason, name, detail in input_problems(raw))
    return errors


@dataclass
class Evidence:
    """What was verified, by what and against what: written next to the installed file."""

    artifact: str
    file: str
    sha256: str
    size: int
    method: str
    tool: str
    tool_version: str
    verified_at: str
    key_fingerprint: str | None = None
    signer_identity: str | None = None
    issuer: str | None = None
    signature_source: str | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "extra" and v is not None}
        out.update(self.extra)
        return out


def sha256_file(path: str) -> tuple[str, int]:
    """Hex sha256 and size of a file, read in chunks (binaries can be large)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def _require(art: Artifact, path: str | None, reason: str, what: str) -> str:
    if not path:
        raise VerificationFailed(art.label, reason, f"no {what} given")
    if not os.path.isfile(path):
        raise VerificationFailed(art.label, reason, f"{what} {path!r} does not exist")
    return path


@dataclass
class SignatureMaterial:
    """The signature and what the signature file or bundle says about the signed file."""

    signature: bytes
    source: str
    bundle_digest: str | None = None
    new_format: bool = False
    certificate_pem: bytes | None = None


def _b64(art: Artifact, text: str, reason: str, where: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerificationFailed(art.label, reason, f"{where} is not base64") from exc


def read_signature_material(art: Artifact) -> SignatureMaterial:
    """Read the detached signature or the bundle (cosign's own format or a Sigstore bundle)."""
    if art.bundle:
        path = _require(art, art.bundle, "missing-signature", "bundle")
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise VerificationFailed(art.label, "bad-bundle", f"{path}: not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise VerificationFailed(art.label, "bad-bundle", f"{path}: not a JSON object")
        if str(data.get("mediaType", "")).startswith(COSIGN_BUNDLE_MEDIA_PREFIX):
            msg = data.get("messageSignature") or {}
            digest = (msg.get("messageDigest") or {})
            if not msg.get("signature") or digest.get("algorithm") != "SHA2_256":
                raise VerificationFailed(art.label, "bad-bundle",
                                         f"{path}: no SHA2_256 message signature")
            bundle_digest = _b64(art, digest.get("digest", ""), "bad-bundle",
                                 f"{path}: messageDigest").hex()
            return SignatureMaterial(
                signature=_b64(art, msg["signature"], "bad-bundle", f"{path}: signature"),
                source=path, bundle_digest=bundle_digest, new_format=True)
        if "base64Signature" not in data:
            raise VerificationFailed(art.label, "bad-bundle",
                                     f"{path}: neither a Sigstore bundle nor a cosign bundle")
        cert = data.get("cert") or None
        cert_pem = None
        if cert:
            cert_pem = cert.encode() if cert.lstrip().startswith("-----") else \
                _b64(art, cert, "bad-bundle", f"{path}: cert")
        return SignatureMaterial(
            signature=_b64(art, data["base64Signature"], "bad-bundle", f"{path}: base64Signature"),
            source=path, certificate_pem=cert_pem)
    if not art.signature:
        raise VerificationFailed(art.label, "missing-signature",
                                 "neither signature nor bundle is given")
    path = _require(art, art.signature, "missing-signature", "signature")
    with open(path, encoding="ascii", errors="replace") as handle:
        text = handle.read()
    return SignatureMaterial(signature=_b64(art, text, "bad-signature-file", path), source=path)


def load_public_key(art: Artifact):
    """The cosign public key (PEM) of a key-based artifact, with its sha256 fingerprint."""
    from cryptography.hazmat.primitives import serialization

    path = _require(art, art.key, "missing-key", "public key")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise VerificationFailed(art.label, "bad-key", f"{path}: {exc}") from exc
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, "sha256:" + hashlib.sha256(der).hexdigest()


def prechecks(art: Artifact) -> tuple[str, int, SignatureMaterial]:
    """Checks both paths share: inputs given, files present, pinned digest, the file a bundle
    names."""
    problems = input_problems(art.__dict__)
    if problems:
        reason, option, detail = problems[0]
        raise VerificationFailed(art.label, reason, f"{option}: {detail}")
    _require(art, art.src, "missing-artifact", "artifact")
    digest, size = sha256_file(art.src)
    if art.sha256 and art.sha256.lower().removeprefix("sha256:") != digest:
        raise VerificationFailed(art.label, "digest-mismatch",
                                 f"{art.src} has sha256 {digest}, the pin is {art.sha256}")
    if art.keyless:
        _require(art, art.trusted_root, "missing-trusted-root", "trusted root")
    material = read_signature_material(art)
    if material.bundle_digest and material.bundle_digest != digest:
        raise VerificationFailed(
            art.label, "bundle-for-another-file",
            f"the bundle signs sha256 {material.bundle_digest}, {art.src} has sha256 {digest} "
            "(modified file, or a bundle of another file)")
    return digest, size, material


def _invalid_key_signature(art: Artifact, fingerprint: str) -> VerificationFailed:
    return VerificationFailed(
        art.label, "invalid-signature",
        f"{art.src} is not signed by key {fingerprint} (modified file, other key, or a "
        "signature of another file)")


def verify_key_signature_python(art: Artifact, digest_hex: str, material: SignatureMaterial,
                                key, fingerprint: str) -> None:
    """ECDSA (or Ed25519/RSA) check of the signature over the file, as cosign does it."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

    digest = bytes.fromhex(digest_hex)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(material.signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(material.signature, digest, padding.PKCS1v15(),
                       utils.Prehashed(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            with open(art.src, "rb") as handle:
                key.verify(material.signature, handle.read())
        else:
            raise VerificationFailed(art.label, "bad-key",
                                     f"{art.key}: unsupported key type {type(key).__name__}")
    except InvalidSignature as exc:
        raise _invalid_key_signature(art, fingerprint) from exc


def cosign_version(cosign: str) -> str:
    proc = subprocess.run([cosign, "version", "--json"], capture_output=True, text=True,
                          timeout=60, check=False)
    try:
        return str(json.loads(proc.stdout).get("gitVersion", "unknown"))
    except ValueError:
        return "unknown"


def cosign_major(version: str) -> int:
    """2 for cosign v2.x, 3 for v3.x; 2 when the version cannot be read (the older flags)."""
    match = re.match(r"v?(\d+)\.", version)
    return int(match.group(1)) if match else 2


def _empty_trusted_root(tmpdir: str) -> str:
    # cosign reads a Sigstore bundle only with a trusted root; a key-based bundle needs no CA or
    # log from it, so an empty root keeps the check offline.
    path = os.path.join(tmpdir, "trusted_root.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"},
                  handle)
    return path


def cosign_argv(cosign: str, art: Artifact, material: SignatureMaterial, tmpdir: str,
                major: int = 2) -> list[str]:
    """The ``cosign verify-blob`` command line (cosign 2.6 or 3), offline and without any network.

    cosign 3 deprecates ``--offline`` (a bundle and a trusted root are how it verifies offline;
    the environment of cosign_env stops its TUF fetch), so it is passed to cosign 2 only.
    """
    argv = [cosign, "verify-blob", *(["--offline=true"] if major < 3 else [])]
    if not art.keyless:
        argv += ["--key", str(art.key), "--insecure-ignore-tlog=true"]
        if art.bundle:
            argv += ["--bundle", art.bundle]
            if material.new_format:
                argv += ["--trusted-root", _empty_trusted_root(tmpdir)]
        else:
            argv += ["--signature", str(art.signature)]
    else:
        argv += ["--bundle", str(art.bundle), "--trusted-root", str(art.trusted_root),
                 "--certificate-oidc-issuer", str(art.certificate_oidc_issuer)]
        if art.certificate_identity:
            argv += ["--certificate-identity", art.certificate_identity]
        else:
            argv += ["--certificate-identity-regexp", str(art.certificate_identity_regexp)]
    return [*argv, art.src]


def cosign_env(tmpdir: str, keyless: bool) -> dict[str, str]:
    """An environment in which cosign contacts nothing: no public TUF root is fetched."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGSTORE_")}
    env["TUF_ROOT"] = os.path.join(tmpdir, "tuf")
    env["HOME"] = tmpdir
    if not keyless:
        # Without a trusted root cosign 2.6 fetches the public one over TUF unless one of the
        # SIGSTORE_* material variables is set; a key-based check never reads this one (it
        # is only for keyless certificate chains), so naming it just stops the fetch.
        env["SIGSTORE_ROOT_FILE"] = os.path.join(tmpdir, "unused-keyless-roots.pem")
    return env


def classify_cosign_failure(art: Artifact, stderr: str, fingerprint: str | None,
                            identity: str | None) -> VerificationFailed:
    """Map cosign's error text onto the shared reasons (the Python path raises the same ones)."""
    text = " ".join(stderr.split())
    if not art.keyless:
        if "invalid signature" not in text:
            return VerificationFailed(art.label, "tool-error",
                                      f"cosign verify-blob failed: {text[-500:]}",
                                      tool_output=text)
        return VerificationFailed(art.label, "invalid-signature",
                                  _invalid_key_signature(art, fingerprint or "").detail,
                                  tool_output=text)
    from .sigstore_keyless import keyless_signature_failure  # type: ignore[import-not-found]

    # Identity, issuer, CA and digest were checked before cosign ran, identically on both paths.
    return keyless_signature_failure(art, identity or "?", text)


def verify_with_cosign(art: Artifact, cosign: str) -> Evidence:
    digest, size, material = prechecks(art)
    fingerprint = identity = issuer = None
    if not art.keyless:
        _key, fingerprint = load_public_key(art)
    else:
        from .sigstore_keyless import keyless_prechecks  # type: ignore[import-not-found]

        facts = keyless_prechecks(art)
        identity, issuer = facts.identity, facts.issuer
    version = cosign_version(cosign)
    with tempfile.TemporaryDirectory(prefix="kf-cosign-") as tmpdir:
        argv = cosign_argv(cosign, art, material, tmpdir, cosign_major(version))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                              env=cosign_env(tmpdir, art.keyless))
    if proc.returncode != 0:
        raise classify_cosign_failure(art, proc.stderr + proc.stdout, fingerprint, identity)
    evidence = Evidence(artifact=art.label, file=art.src, sha256=digest, size=size,
                        method="keyless" if art.keyless else "key", tool="cosign",
                        tool_version=version, verified_at=_now(),
                        key_fingerprint=fingerprint, signature_source=material.source,
                        signer_identity=identity, issuer=issuer)
    return evidence


def verify_with_python(art: Artifact) -> Evidence:
    digest, size, material = prechecks(art)
    if art.keyless:
        from .sigstore_keyless import verify_keyless  # type: ignore[import-not-found]

        identity, issuer, version = verify_keyless(art, digest)
        return Evidence(artifact=art.label, file=art.src, sha256=digest, size=size,
                        method="keyless", tool="sigstore-python", tool_version=version,
                        verified_at=_now(), signer_identity=identity, issuer=issuer,
                        signature_source=material.source)
    import cryptography

    key, fingerprint = load_public_key(art)
    verify_key_signature_python(art, digest, material, key, fingerprint)
    return Evidence(artifact=art.label, file=art.src, sha256=digest, size=size, method="key",
                    tool="cryptography", tool_version=cryptography.__version__,
                    verified_at=_now(), key_fingerprint=fingerprint,
                    signature_source=material.source)


def verify_artifact(art: Artifact, backend: str = "auto", cosign: str | None = None) -> Evidence:
    """Verify one artifact on the controller; return the evidence or raise VerificationFailed.

    backend: ``cosign`` (the given or found binary), ``python``, or ``auto`` (cosign when found).
    """
    if backend not in ("auto", "cosign", "python"):
        raise ValueError(f"unknown backend {backend!r}")
    if backend != "python" and cosign is None:
        from shutil import which

        cosign = which("cosign")
    if backend == "cosign" and not cosign:
        raise VerificationFailed(art.label, "tool-error", "cosign is not on PATH")
    if cosign and backend != "python":
        return verify_with_cosign(art, cosign)
    return verify_with_python(art)
