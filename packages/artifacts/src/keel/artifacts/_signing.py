"""Key-based signing in the OpenSSF model-signing format (v1.0 predicate), offline.

A signature is a Sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``) whose
DSSE envelope carries an in-toto Statement v1: one subject (the artifact name, digest =
SHA-256 over the concatenated resource digests in listed order) and the predicate
``https://model_signing/signature/v1.0`` listing every file (``name``, ``algorithm``,
``digest``) with serialization ``files``/``sha256``/no symlinks, ignoring ``model.sig``.
The bundle's ``verificationMaterial.publicKey.hint`` is the SHA-256 of the signer's
PEM public key, exactly as ``model_signing`` writes it, so the upstream verifier
(``model_signing verify key DIR --signature DIR/model.sig --public_key KEY.pem``)
accepts a Keel-signed artifact. Implemented on ``cryptography`` alone (ADR 0003).

ECDSA signatures are made deterministic (RFC 6979), so signing the same files with the
same key gives the same bytes and a signed archive is byte-reproducible too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keel.artifacts._canonical import canonical_dumps, strict_loads
from keel.artifacts._errors import (
    InvalidInputError,
    ManifestError,
    SignatureError,
    UntrustedSignerError,
)

SIGNATURE_FILE = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SERIALIZATION = {
    "method": "files",
    "hash_type": "sha256",
    "allow_symlinks": False,
    "ignore_paths": [SIGNATURE_FILE],
}
MAX_SIGNATURE_BYTES = 16 * 1024 * 1024
_CURVES: dict[str, hashes.HashAlgorithm] = {
    "secp256r1": hashes.SHA256(),
    "secp384r1": hashes.SHA384(),
    "secp521r1": hashes.SHA512(),
}


def _hash_for(key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    algo = _CURVES.get(key.curve.name)
    if algo is None:
        raise InvalidInputError(
            f"unsupported curve {key.curve.name}: use P-256, P-384 or P-521 (model-signing's set)"
        )
    return algo


def _pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """The bundle's public-key hint: SHA-256 hex of the PEM SubjectPublicKeyInfo."""
    return hashlib.sha256(_pem(key)).hexdigest()


def pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of an in-toto payload."""
    return b"DSSEv1 %d %s %d %s" % (
        len(PAYLOAD_TYPE),
        PAYLOAD_TYPE.encode(),
        len(payload),
        payload,
    )


def generate_keypair(password: bytes | None = None) -> tuple[bytes, bytes]:
    """A new P-256 key pair: (PKCS#8 PEM private key, encrypted if ``password``; PEM public key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    return priv, _pem(key.public_key())


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise InvalidInputError(f"not a PEM public key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise InvalidInputError("public key is not an elliptic-curve key (model-signing needs EC)")
    _hash_for(key)
    return key


class SigningKey:
    """An EC private key that signs artifacts (``SigningKey.from_pem(Path(...).read_bytes())``)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self._hash = _hash_for(key.public_key())

    @classmethod
    def from_pem(cls, pem: bytes, password: bytes | None = None) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(pem, password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise InvalidInputError(f"cannot load the private key: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidInputError(
                "private key is not an elliptic-curve key (model-signing needs EC)"
            )
        return cls(key)

    @classmethod
    def from_file(cls, path: str | Path, password: bytes | None = None) -> SigningKey:
        try:
            return cls.from_pem(Path(path).read_bytes(), password)
        except OSError as e:
            raise InvalidInputError(f"cannot read private key {path}: {e}") from None

    @property
    def public_pem(self) -> bytes:
        return _pem(self._key.public_key())

    def sign(self, name: str, resources: Sequence[tuple[str, str]]) -> bytes:
        """The bundle bytes signing ``resources`` ((relative path, sha256 hex), any order)."""
        payload = canonical_dumps(statement(name, resources))
        try:
            algo = ec.ECDSA(self._hash, deterministic_signing=True)
        except TypeError:  # pragma: no cover - cryptography < 44: randomised ECDSA
            algo = ec.ECDSA(self._hash)
        sig = self._key.sign(pae(payload), algo)
        bundle = {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {
                "publicKey": {"hint": key_hint(self._key.public_key())},
                "tlogEntries": [],
            },
            "dsseEnvelope": {
                "payload": base64.b64encode(payload).decode(),
                "payloadType": PAYLOAD_TYPE,
                "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
            },
        }
        return canonical_dumps(bundle)


def statement(name: str, resources: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The in-toto statement over ``resources``, sorted by path."""
    items = sorted(resources)
    root = hashlib.sha256(b"".join(bytes.fromhex(d) for _, d in items)).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": SERIALIZATION,
            "resources": [{"name": n, "algorithm": "sha256", "digest": d} for n, d in items],
        },
    }


@dataclass(frozen=True)
class TrustPolicy:
    """Which signers a loader trusts: a set of PEM public keys.

    Unsigned artifacts are refused unless ``allow_unsigned=True`` (then every load of one
    is logged as a warning). An empty key set with ``allow_unsigned=False`` refuses all.
    """

    public_keys: tuple[bytes, ...] = ()
    allow_unsigned: bool = False
    _keys: tuple[ec.EllipticCurvePublicKey, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", tuple(load_public_key(p) for p in self.public_keys))

    @classmethod
    def from_files(
        cls, paths: Iterable[str | Path], *, allow_unsigned: bool = False
    ) -> TrustPolicy:
        pems = []
        for p in paths:
            try:
                pems.append(Path(p).read_bytes())
            except OSError as e:
                raise InvalidInputError(f"cannot read public key {p}: {e}") from None
        return cls(tuple(pems), allow_unsigned=allow_unsigned)

    @classmethod
    def unsigned_ok(cls) -> TrustPolicy:
        """Accept unsigned artifacts (hashes still checked); for local experiments only."""
        return cls((), allow_unsigned=True)

    def verify(self, bundle: bytes) -> tuple[str, dict[str, str], str]:
        """Verify a bundle: (subject name, {path: sha256 hex}, signer key hint)."""
        if len(bundle) > MAX_SIGNATURE_BYTES:
            raise SignatureError(f"signature is {len(bundle)} bytes (limit {MAX_SIGNATURE_BYTES})")
        try:
            doc = strict_loads(bundle, what="signature bundle")
            if doc.get("mediaType") != BUNDLE_MEDIA_TYPE:
                raise SignatureError(f"unsupported bundle media type {doc.get('mediaType')!r}")
            env = doc["dsseEnvelope"]
            if env["payloadType"] != PAYLOAD_TYPE:
                raise SignatureError(f"unexpected DSSE payload type {env['payloadType']!r}")
            payload = base64.b64decode(env["payload"], validate=True)
            sigs = [base64.b64decode(s["sig"], validate=True) for s in env["signatures"]]
        except ManifestError as e:
            raise SignatureError(str(e)) from None
        except (KeyError, TypeError, AttributeError, binascii.Error, ValueError) as e:
            raise SignatureError(f"malformed signature bundle: {type(e).__name__}: {e}") from None
        if len(sigs) != 1:
            raise SignatureError(f"expected one DSSE signature, found {len(sigs)}")
        signer = self._check(pae(payload), sigs[0])
        return (*_resources(payload), signer)

    def _check(self, message: bytes, sig: bytes) -> str:
        for key in self._keys:
            try:
                key.verify(sig, message, ec.ECDSA(_hash_for(key)))
            except InvalidSignature:
                continue
            return key_hint(key)
        raise UntrustedSignerError(
            "the signature does not verify with any trusted key "
            f"({len(self._keys)} in the trust policy): untrusted signer or tampered signature"
        )


def _resources(payload: bytes) -> tuple[str, dict[str, str]]:
    try:
        st = strict_loads(payload, what="in-toto statement")
        if st["_type"] != STATEMENT_TYPE or st["predicateType"] != PREDICATE_TYPE:
            raise SignatureError("not a model-signing v1.0 in-toto statement")
        pred = st["predicate"]
        if pred["serialization"] != SERIALIZATION:
            raise SignatureError(f"unsupported serialization {pred['serialization']!r}")
        (subject,) = st["subject"]
        out: dict[str, str] = {}
        for r in pred["resources"]:
            if r["algorithm"] != "sha256" or not isinstance(r["name"], str):
                raise SignatureError(f"unsupported resource {r!r}")
            if r["name"] in out:
                raise SignatureError(f"resource {r['name']!r} listed twice")
            out[r["name"]] = str(r["digest"]).lower()
        root = hashlib.sha256(b"".join(bytes.fromhex(d) for d in out.values())).hexdigest()
        if subject["digest"]["sha256"] != root:
            raise SignatureError("statement subject digest does not match its resources")
        return str(subject["name"]), out
    except SignatureError:
        raise
    except ManifestError as e:
        raise SignatureError(str(e)) from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SignatureError(f"malformed in-toto statement: {type(e).__name__}: {e}") from None
