"""SL95x-SL99x: obfuscation — decoded payloads run as code, names assembled at run time, opaque literals."""

from __future__ import annotations

import math
from collections import Counter

from safeloader.audit.rules.base import Family, Hit, Rule

FAMILY = "obfuscation"

RULES = (
    Rule("SL951", "decoded-code", "critical", 506, "runs decoded data as code ({detail})", FAMILY),
    Rule("SL952", "chr-chain", "high", 506, "assembles a string from {detail} character codes", FAMILY),
    Rule(
        "SL953",
        "high-entropy-literal",
        "medium",
        506,
        "contains an opaque high-entropy literal ({detail}), typical of packed payloads",
        FAMILY,
    ),
    Rule("SL954", "long-literal", "low", 506, "contains a very long literal ({detail})", FAMILY),
    Rule(
        "SL955",
        "runtime-built-name",
        "critical",
        506,
        "builds the name {detail} at run time, hiding a dangerous reference",
        FAMILY,
    ),
)

#: Calls whose result is decoded or decompressed bytes.
DECODERS = frozenset(
    {
        "base64.b64decode",
        "base64.b32decode",
        "base64.b16decode",
        "base64.b85decode",
        "base64.a85decode",
        "base64.decodebytes",
        "base64.urlsafe_b64decode",
        "base64.standard_b64decode",
        "binascii.a2b_base64",
        "binascii.unhexlify",
        "binascii.a2b_hex",
        "zlib.decompress",
        "gzip.decompress",
        "bz2.decompress",
        "lzma.decompress",
        "codecs.decode",
        "bytes.fromhex",
        "bytearray.fromhex",
        "marshal.loads",
    }
)

_LONG_LITERAL = 20_000
_ENTROPY_MIN_LENGTH = 200
_ENTROPY_BITS = 5.0
CHR_CHAIN_MIN = 4


def literal_strings(value: str) -> list[Hit]:
    if len(value) >= _LONG_LITERAL:
        return [("SL954", f"{len(value)} characters")]
    if len(value) >= _ENTROPY_MIN_LENGTH and value.count(" ") < len(value) // 40:
        counts = Counter(value)
        entropy = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
        if entropy >= _ENTROPY_BITS:
            return [("SL953", f"{len(value)} characters, {entropy:.1f} bits per character")]
    return []


FAMILY_TABLE = Family(name=FAMILY, rules=RULES, string_checks=(literal_strings,))
