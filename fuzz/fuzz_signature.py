"""Fuzz the signature parsers: ``safeloader.sig`` files, key ids and PEM key files end in a value or a
SafeLoaderError (SignatureError, UnknownKeyError) — never another exception, a crash or a hang.

Each input is tried as a signature file against two manifests (a Hub one and a local one) with one trusted
key, through :func:`~safeloader.verify.signatures.verify_signatures`; its records are re-written with
:func:`~safeloader.verify.signatures.add_signature` and parsed again; every key id in it is parsed; and the bytes
are also read as a trusted public key file and as a private key file, as ``[sources] trusted_keys`` and
``safeloader sign --key`` read them.

Under atheris: ``python fuzz/fuzz_signature.py [libFuzzer flags] fuzz/corpus/signature``. Without it:
``python fuzz/fuzz_signature.py --smoke 2000`` or ``--smoke-seconds 20``.
``--write-corpus`` adds missing seeds to the seed corpus with the real signer.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519  # noqa: E402
from fuzz_audit import main  # noqa: E402
from run_all import prepare_target  # noqa: E402

from safeloader.errors import SafeLoaderError  # noqa: E402
from safeloader.resolve.manifest import Manifest  # noqa: E402
from safeloader.verify.signatures import (  # noqa: E402
    add_signature,
    check_self_consistent,
    key_id,
    load_private_key,
    load_trusted_key,
    parse_signature_file,
    public_key_from_id,
    sign_manifest,
    verify_signatures,
)

MAX_INPUT = 64 * 1024
WORKDIR = Path(tempfile.mkdtemp(prefix="fuzz-signature-"))
KEY_FILE = WORKDIR / "key.pem"
#: Fixed keys, so the seed signatures stay valid across runs.
TRUSTED_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
TRUSTED = [key_id(TRUSTED_KEY.public_key())]
HUB = Manifest(
    source="hub",
    source_id="org/pipe",
    repo="org/pipe",
    repo_type="model",
    requested_revision=None,
    commit="0123456789abcdef0123456789abcdef01234567",
    entry="pipeline.py",
    files={"pipeline.py": "a" * 64, "helpers.py": "b" * 64},
    fetched_at="",
    blob_root=WORKDIR,
)
LOCAL = Manifest(
    source="local_dir",
    source_id="local:/src/pipe",
    repo="/src/pipe",
    repo_type=None,
    requested_revision=None,
    commit=None,
    entry="pipeline.py",
    files={"pipeline.py": "c" * 64},
    fetched_at="",
    blob_root=WORKDIR,
)


def parse_one(data: bytes) -> None:
    data = data[:MAX_INPUT]
    for manifest in (HUB, LOCAL):
        with contextlib.suppress(SafeLoaderError):
            verify_signatures(manifest, data, TRUSTED)
        with contextlib.suppress(SafeLoaderError):  # the check made when no key is trusted: a str or None
            assert isinstance(check_self_consistent(manifest, data), (str, type(None)))
    try:
        records = parse_signature_file(data)
    except SafeLoaderError:
        records = []
    for record in records:
        with contextlib.suppress(SafeLoaderError):
            public_key_from_id(record["key_id"])
        if isinstance(record["signed"].get("entry"), str):
            with contextlib.suppress(SafeLoaderError):
                parse_signature_file(add_signature(data, record))
    KEY_FILE.write_bytes(data)
    with contextlib.suppress(SafeLoaderError):
        load_trusted_key(str(KEY_FILE))
    with contextlib.suppress(SafeLoaderError):
        load_private_key(KEY_FILE)
    text = data.decode("utf-8", "replace")
    if text.startswith("ed25519:"):  # anything else names a file, and the policy's author picks those
        with contextlib.suppress(SafeLoaderError):
            load_trusted_key(text)


# --- seed corpus ------------------------------------------------------------------------------------------


def _pem_public(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def _pem_private(key: Any, encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    encryption = encryption or serialization.NoEncryption()
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def seed_inputs() -> dict[str, bytes]:
    """Signature files from the real signer, key files of several kinds, edge cases and past findings."""
    by_trusted = sign_manifest(HUB, TRUSTED_KEY)
    by_other = sign_manifest(HUB, OTHER_KEY)
    local = sign_manifest(LOCAL, TRUSTED_KEY)
    tampered = dict(by_trusted, signature=sign_manifest(LOCAL, TRUSTED_KEY)["signature"])
    return {
        "hub_trusted.sig": add_signature(None, by_trusted),
        "hub_untrusted.sig": add_signature(None, by_other),
        "two_signers.sig": add_signature(add_signature(None, by_other), by_trusted),
        "local_trusted.sig": add_signature(None, local),
        "wrong_signature.sig": add_signature(None, tampered),
        "edge_bad_key_id.sig": add_signature(None, dict(by_trusted, key_id="ed25519:AAAA")),
        "edge_not_base64.sig": add_signature(None, dict(by_trusted, signature="é!")),
        "edge_wrong_format.sig": json.dumps({"format": "v0", "signatures": []}).encode(),
        "edge_record_not_map.sig": json.dumps({"format": "safeloader-signature-v1", "signatures": [1]}).encode(),
        "edge_not_utf8.sig": b'{"format": "\xff"}',
        "key_ed25519.pub": _pem_public(TRUSTED_KEY.public_key()),
        "key_ed25519.pem": _pem_private(TRUSTED_KEY),
        "key_ed25519_encrypted.pem": _pem_private(TRUSTED_KEY, serialization.BestAvailableEncryption(b"pw")),
        "key_x25519.pub": _pem_public(x25519.X25519PrivateKey.from_private_bytes(bytes(32)).public_key()),
        "key_ec.pub": _pem_public(ec.derive_private_key(7, ec.SECP256R1()).public_key()),
        "key_rsa.pem": _pem_private(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "key_id.txt": TRUSTED[0].encode(),
        # Past findings: a key on a curve cryptography does not support raised UnsupportedAlgorithm; JSON
        # nested thousands deep raised RecursionError out of json.loads.
        "finding_unsupported_curve.pub": _pem_public(ec.derive_private_key(7, ec.SECP256R1()).public_key()).replace(
            b"zj0DAQcD", b"zT0DAQcD"
        ),
        "finding_deep_json.sig": b'{"format": "safeloader-signature-v1", "signatures": ' + b"[" * 60000,
    }


def write_corpus() -> None:
    directory = HERE / "corpus" / "signature"
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seed_inputs().items():
        path = directory / name
        if not path.exists():  # some seeds are random (keys, salts): keep the committed ones stable
            path.write_bytes(data)


if __name__ == "__main__":
    if "--write-corpus" in sys.argv:
        write_corpus()
        sys.exit(0)
    sys.exit(main(prepare_target(parse_one, sys.argv[1:]), "signature", sys.argv[1:]))
