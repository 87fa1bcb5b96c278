"""Ed25519 detached signatures over a pipeline's code.

Where a signature lives
-----------------------
A file named ``safeloader.sig`` in the pipeline root: the repository root for Hub repos and model
repos, the release folder (``v0.42.1/``) of the community mirror, the directory of a local pipeline.
The resolver fetches it at the same commit as the code and keeps it out of the signed file table.

It is UTF-8 JSON::

    {"format": "safeloader-signature-v1",
     "signatures": [{"key_id": "ed25519:<base64 raw public key>",
                     "signature": "<base64 Ed25519 signature>",
                     "signed": {"repo": …, "subfolder": …, "entry": "pipeline.py",
                                "files": {"pipeline.py": "<sha256>", …}}}]}

What is signed
--------------
The canonical JSON (sorted keys, no spaces) of ``signed``: the entry module and every file it will load
with its sha256, plus the Hub repo id (``null`` for local pipelines, so a signed directory can be moved).
The commit is not part of it: a file inside a commit cannot sign that commit's own id, and the file
hashes already fix every byte that will run. One file may hold several signatures (one per entry in a
community folder, or several signers); a verifier uses those whose ``signed`` matches the manifest.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from safeloader.errors import SignatureError
from safeloader.resolve.manifest import Manifest

SIGNATURE_FILE = "safeloader.sig"
SIGNATURE_FORMAT = "safeloader-signature-v1"
KEY_PREFIX = "ed25519:"


def signed_fields(manifest: Manifest) -> dict[str, Any]:
    """The manifest fields a signature covers."""
    remote = manifest.source not in ("local_dir", "local_file")
    return {
        "repo": manifest.repo if remote else None,
        "subfolder": manifest.subfolder,
        "entry": manifest.entry,
        "files": dict(sorted(manifest.files.items())),
    }


def canonical(fields: Mapping[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The ``ed25519:<base64>`` form used in policies and signature files."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def public_key_from_id(value: str) -> Ed25519PublicKey:
    if not value.startswith(KEY_PREFIX):
        raise SignatureError(f"key {value!r} is not of the form ed25519:<base64>; copy it from `safeloader keygen`.")
    try:
        raw = base64.b64decode(value[len(KEY_PREFIX) :], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(
            f"key {value!r} is not a valid Ed25519 public key; copy it from `safeloader keygen`."
        ) from exc


def load_trusted_key(entry: str) -> str:
    """Normalize a policy ``trusted_keys`` entry (``ed25519:…`` or a PEM file path) to its key id."""
    if entry.startswith(KEY_PREFIX):
        return key_id(public_key_from_id(entry))
    path = Path(entry)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise SignatureError(
            f"trusted key file {path} cannot be read ({exc.strerror}); fix the path in [sources] trusted_keys."
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(
            f"trusted key file {path} is not a PEM public key; use the .pub file from keygen."
        ) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"trusted key file {path} is not an Ed25519 key; generate one with `safeloader keygen`.")
    return key_id(key)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise SignatureError(f"private key {path} cannot be read ({exc.strerror}); check the --key path.") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(
            f"{path} is not an unencrypted PEM private key; create one with `safeloader keygen`."
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key; create one with `safeloader keygen`.")
    return key


def generate_keypair(prefix: Path) -> tuple[Path, Path, str]:
    """Write ``<prefix>.pem`` (private, mode 0600) and ``<prefix>.pub``; return both paths and the key id."""
    private = Ed25519PrivateKey.generate()
    private_path, public_path = prefix.with_name(prefix.name + ".pem"), prefix.with_name(prefix.name + ".pub")
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    from safeloader.resolve.cache import atomic_write

    atomic_write(private_path, private_pem, mode=0o600)
    atomic_write(public_path, public_pem, mode=0o644)
    return private_path, public_path, key_id(private.public_key())


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    fields = signed_fields(manifest)
    signature = private_key.sign(canonical(fields))
    return {
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(signature).decode("ascii"),
        "signed": fields,
    }


def add_signature(existing: bytes | None, record: Mapping[str, Any]) -> bytes:
    """A signature file with ``record`` added, replacing any record of the same key for the same entry."""
    records = [
        r
        for r in (parse_signature_file(existing) if existing else [])
        if not (r["key_id"] == record["key_id"] and r["signed"].get("entry") == record["signed"]["entry"])
    ]
    records.append(dict(record))
    body = {"format": SIGNATURE_FORMAT, "signatures": records}
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8")


def parse_signature_file(data: bytes) -> list[dict[str, Any]]:
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise SignatureError(f"{SIGNATURE_FILE} is not UTF-8 JSON; re-create it with `safeloader sign`.") from exc
    if (
        not isinstance(body, dict)
        or body.get("format") != SIGNATURE_FORMAT
        or not isinstance(body.get("signatures"), list)
    ):
        raise SignatureError(f"{SIGNATURE_FILE} is not a {SIGNATURE_FORMAT} file; re-create it with `safeloader sign`.")
    records = body["signatures"]
    for record in records:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("key_id"), str)
            and isinstance(record.get("signature"), str)
            and isinstance(record.get("signed"), dict)
        ):
            raise SignatureError(
                f"{SIGNATURE_FILE} holds a malformed signature record; re-create it with `safeloader sign`."
            )
    return records


@dataclass(frozen=True)
class SignatureCheck:
    key_id: str


def verify_signatures(manifest: Manifest, data: bytes, trusted: Iterable[str]) -> SignatureCheck:
    """Check the records of a signature file against ``manifest``; return the trusted key that signed it.

    Raises :class:`~safeloader.errors.SignatureError` when a record for this code does not verify or no
    record covers this code, and :class:`~safeloader.errors.UnknownKeyError` when the only valid
    signatures are by keys outside ``trusted``.
    """
    from safeloader.errors import UnknownKeyError

    trusted_ids = {load_trusted_key(k) for k in trusted}
    expected = signed_fields(manifest)
    payload = canonical(expected)
    matching = [r for r in parse_signature_file(data) if r["signed"] == expected]
    if not matching:
        raise SignatureError(
            f"{SIGNATURE_FILE} of {manifest.source_id} has no signature over this code (files or entry differ); "
            "the code changed after signing — re-sign it or do not load it."
        )
    untrusted: list[str] = []
    for record in matching:
        public_key = public_key_from_id(record["key_id"])
        try:
            signature = base64.b64decode(record["signature"], validate=True)
            public_key.verify(signature, payload)
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise SignatureError(
                f"the signature by {record['key_id']} on {manifest.source_id} does not verify; "
                "the code or the signature was altered — do not load it."
            ) from exc
        if key_id(public_key) in trusted_ids:
            return SignatureCheck(key_id=key_id(public_key))
        untrusted.append(record["key_id"])
    raise UnknownKeyError(
        f"{manifest.source_id} is signed only by {', '.join(untrusted)}, which the policy does not trust; "
        "add the key to [sources] trusted_keys if you trust its owner."
    )


def check_self_consistent(manifest: Manifest, data: bytes) -> str | None:
    """Check a signature file no policy key vouches for: what can be checked without trusting anyone.

    Returns why the file cannot vouch for this code (unparsable, or records for this entry over other files),
    or ``None`` (also when it only signs other entries, e.g. other pipelines of a community folder: this one
    is then simply unsigned). Raises :class:`~safeloader.errors.SignatureError` when a record over exactly
    this code does not verify under the key it names: that is a forgery or tampering, never an accident.
    """
    try:
        records = parse_signature_file(data)
    except SignatureError as exc:
        return str(exc)
    expected = signed_fields(manifest)
    for_entry = [r for r in records if r["signed"].get("entry") == expected["entry"]]
    if not for_entry:
        return None
    matching = [r for r in for_entry if r["signed"] == expected]
    if not matching:
        return f"{SIGNATURE_FILE} holds no signature over this code (files or entry differ): it changed after signing"
    for record in matching:
        try:
            public_key = public_key_from_id(record["key_id"])
        except SignatureError as exc:
            return str(exc)
        try:
            public_key.verify(base64.b64decode(record["signature"], validate=True), canonical(expected))
        except (binascii.Error, ValueError, InvalidSignature) as exc:
            raise SignatureError(
                f"the signature by {record['key_id']} on {manifest.source_id} does not verify; "
                "the code or the signature was altered — do not load it."
            ) from exc
    return None
