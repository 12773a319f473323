"""DKIM keys and fast DKIM signing (RFC 6376, relaxed/relaxed; RFC 8463 for ed25519).

dkimpy's ``dkim.sign`` parses the PEM key, the whole message and every header on each call and
signs RSA in pure Python. The send loop signs thousands of messages a second, so `DkimSigner`
parses the key once, canonicalises with a few byte-level regular expressions, hashes with
hashlib and signs with ``cryptography`` (OpenSSL, which releases the GIL, so signing threads
use every core). Tests check every signature with dkimpy's verifier.

``cryptography`` is a hard dependency of this module.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mailctl.errors import DkimError, DkimKeyError

__all__ = [
    "DEFAULT_SIGNED_HEADERS",
    "DkimAlgorithm",
    "DkimKeyConfig",
    "DkimSigner",
    "generate_keypair",
    "parse_algorithm",
    "load_key",
    "load_private_key",
    "public_key_txt",
    "txt_record",
]


class DkimAlgorithm(StrEnum):
    RSA_SHA256 = "rsa-sha256"
    ED25519_SHA256 = "ed25519-sha256"


# The key type alone (DNS `k=` value) names the same algorithm: `--algorithm rsa` is meant.
_ALGORITHM_ALIASES = {"rsa": DkimAlgorithm.RSA_SHA256, "ed25519": DkimAlgorithm.ED25519_SHA256}


def parse_algorithm(text: DkimAlgorithm | str) -> DkimAlgorithm:
    """`text` as a DkimAlgorithm (`rsa` and `ed25519` accepted as aliases); a DkimError listing
    the valid values otherwise."""
    if isinstance(text, DkimAlgorithm):
        return text
    key = text.strip().lower()
    if key in _ALGORITHM_ALIASES:
        return _ALGORITHM_ALIASES[key]
    try:
        return DkimAlgorithm(key)
    except ValueError:
        valid = ", ".join([*(a.value for a in DkimAlgorithm), *_ALGORITHM_ALIASES])
        raise DkimError(f"unknown DKIM algorithm '{text}' (valid: {valid})") from None


# RFC 8058 requires List-Unsubscribe and List-Unsubscribe-Post to be covered by the signature.
DEFAULT_SIGNED_HEADERS: tuple[str, ...] = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "Feedback-ID",
)

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class DkimKeyConfig:
    """One signing key: ``selector._domainkey.domain`` publishes its public half."""

    selector: str
    domain: str
    # repr=False: a config object in a log line or traceback must never show the key.
    private_key_pem: bytes = field(repr=False)
    algorithm: DkimAlgorithm = DkimAlgorithm.RSA_SHA256

    def __post_init__(self) -> None:
        # Accept the plain strings a YAML loader hands over, but store the enum.
        object.__setattr__(self, "algorithm", DkimAlgorithm(self.algorithm))
        object.__setattr__(self, "domain", self.domain.rstrip(".").lower())

    @property
    def record_name(self) -> str:
        """The DNS name of the key record: ``selector._domainkey.domain``."""
        return f"{self.selector}._domainkey.{self.domain}"


def load_key(
    key_file: str | os.PathLike[str] | None = None,
    key_env: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """Read a PEM private key from a file or an environment variable (exactly one of them).

    The key is checked to be a PEM private key; errors name the file or variable, never the key.
    """
    if (key_file is None) == (key_env is None):
        raise DkimKeyError("give exactly one of key_file and key_env for a DKIM key")
    if key_file is not None:
        source = f"DKIM key file {os.fspath(key_file)}"
        try:
            pem = Path(key_file).read_bytes()
        except OSError as exc:
            raise DkimKeyError(f"{source} cannot be read: {exc.strerror}") from None
    else:
        source = f"environment variable {key_env}"
        value = (os.environ if environ is None else environ).get(key_env or "")
        if not value:
            raise DkimKeyError(f"{source} (DKIM key) is not set or empty")
        # Env vars often carry the PEM with literal "\n" because newlines are awkward there.
        pem = value.replace("\\n", "\n").encode("ascii", "replace")
    _parse_pem(pem, source)
    return pem


def _parse_pem(pem: bytes, source: str) -> PrivateKey:
    # `from None` everywhere: cryptography's messages are fine, but a chained traceback could
    # show the PEM bytes as a local, and keys must never reach a terminal.
    if b"PRIVATE KEY-----" not in pem:
        raise DkimKeyError(f"{source} does not hold a PEM private key")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise DkimKeyError(f"{source} is encrypted; DKIM keys must be unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise DkimKeyError(f"{source} is not a valid PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise DkimKeyError(f"{source} is neither an RSA nor an Ed25519 key")
    return key


def load_private_key(key: DkimKeyConfig) -> PrivateKey:
    """Parse the configured PEM and check it matches the configured algorithm."""
    source = f"DKIM key {key.record_name}"
    private_key = _parse_pem(key.private_key_pem, source)
    want = (
        rsa.RSAPrivateKey
        if key.algorithm is DkimAlgorithm.RSA_SHA256
        else (ed25519.Ed25519PrivateKey)
    )
    if not isinstance(private_key, want):
        raise DkimKeyError(f"{source} is not a key for {key.algorithm}")
    return private_key


def public_key_txt(private_key: PrivateKey) -> str:
    """The TXT value (``v=DKIM1; k=...; p=...``) that publishes this key's public half."""
    public = private_key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        # RFC 8463: p= is the raw 32-byte key, not a SubjectPublicKeyInfo.
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def generate_keypair(
    bits: int = 2048, *, algorithm: DkimAlgorithm | str = DkimAlgorithm.RSA_SHA256
) -> tuple[bytes, str]:
    """Make a new key: (unencrypted PKCS#8 PEM private key, TXT value to publish).

    ``bits`` applies to RSA only; below 1024 receivers ignore the key, so it is refused.
    """
    algorithm = parse_algorithm(algorithm)
    private_key: PrivateKey
    if algorithm is DkimAlgorithm.ED25519_SHA256:
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        if not 1024 <= bits <= 8192:
            raise DkimError(f"RSA DKIM keys must have 1024 to 8192 bits, not {bits}")
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, public_key_txt(private_key)


def txt_record(selector: str, domain: str, txt: str, *, ttl: int | None = 3600) -> str:
    """One zone-file line publishing ``txt`` at ``selector._domainkey.domain``.

    A TXT character-string holds at most 255 bytes, so long values (any RSA key of 2048 bits
    or more) become several quoted strings, which resolvers concatenate.
    """
    chunks = [txt[i : i + 255] for i in range(0, len(txt), 255)] or [""]
    quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    ttl_part = f"{ttl} " if ttl is not None else ""
    return f"{selector}._domainkey.{domain.rstrip('.')}. {ttl_part}IN TXT {quoted}"


# --- canonicalisation (RFC 6376 3.4.2 and 3.4.4), byte-for-byte what dkimpy verifies ----------

_WSP_RUN = re.compile(rb"[ \t]+")
_BARE_LF = re.compile(rb"(?<!\r)\n")


def _relaxed_header(name: bytes, value: bytes) -> bytes:
    """``name:value`` canonicalised, without the trailing CRLF."""
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" \t")
    return name.rstrip(b" \t").lower() + b":" + value


def relaxed_body(body: bytes) -> bytes:
    """Relaxed body canonicalisation; ``body`` uses CRLF line ends.

    Built from ``bytes.replace`` rather than regular expressions: the regex engine costs about
    20 ns a byte, which made a 3 KB body cost more than the RSA signature.
    """
    # Compress every WSP run to one space (a tab alone becomes a space too) ...
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    # ... after which whitespace at a line end is at most one space.
    body = body.replace(b" \r\n", b"\r\n")
    # Ignore empty lines at the end; a non-empty body ends in exactly one CRLF and an empty
    # body hashes as nothing at all (RFC 6376 errata 3192, as dkimpy and OpenDKIM do).
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    body = body[:end]
    return body + b"\r\n" if body else b""


def _split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields as (name, raw value incl. folds, without final CRLF), and the body."""
    if b"\n" in message and message.count(b"\n") != message.count(b"\r\n"):
        message = _BARE_LF.sub(b"\r\n", message)
    end = message.find(b"\r\n\r\n")
    if end < 0:
        header_block, body = message, b""
        header_block = header_block.removesuffix(b"\r\n")
    else:
        header_block, body = message[:end], message[end + 4 :]
    fields: list[tuple[bytes, bytes]] = []
    for line in header_block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
            continue
        colon = line.find(b":")
        if colon <= 0:
            raise DkimError("message header is malformed: a line has no field name")
        fields.append((line[:colon], line[colon + 1 :]))
    return fields, body


def _fold(tags: list[bytes], first_line_used: int) -> bytes:
    """Join ``tag=value`` items with ``; ``, folding lines before they pass column 76.

    A long ``h=`` list is also folded after its colons (FWS is allowed there, RFC 6376 3.5).
    """
    # Atoms are the unbreakable pieces; the flag says whether a space precedes them unfolded.
    atoms: list[tuple[bytes, bool]] = []
    for index, tag in enumerate(tags):
        end = b";" if index < len(tags) - 1 else b""
        if tag.startswith(b"h="):
            names = tag.split(b":")
            atoms += [(n + b":", i == 0) for i, n in enumerate(names[:-1])]
            atoms.append((names[-1] + end, len(names) == 1))
        else:
            atoms.append((tag + end, True))
    out = bytearray()
    column = first_line_used
    for atom, spaced in atoms:
        if column + len(atom) + 1 > 76 and column > 1:
            out += b"\r\n "
            column = 1
        elif spaced:
            out += b" "
            column += 1
        out += atom
        column += len(atom)
    return bytes(out)


class DkimSigner:
    """Signs messages with one key; build once per key and reuse for every message.

    ``sign(message)`` returns the ``DKIM-Signature: ...\\r\\n`` header to prepend. Only the
    listed headers that the message has are signed (each occurrence, bottom-up as RFC 6376
    5.4.2 selects them); names in ``oversign`` are listed once more than they occur so that
    nobody can add another one later without breaking the signature. Thread-safe: signing
    releases the GIL, so a small thread pool spreads the RSA cost over cores.
    """

    def __init__(
        self,
        key: DkimKeyConfig,
        headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
        *,
        oversign: Sequence[str] = ("From",),
        timestamp: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self._private_key = load_private_key(key)
        self._header_names = tuple(dict.fromkeys(h.lower().encode("ascii") for h in headers))
        self._oversign = frozenset(h.lower().encode("ascii") for h in oversign)
        self._timestamp = timestamp
        self._clock = clock
        self._prefix_tags = [
            b"v=1",
            b"a=" + key.algorithm.encode(),
            b"c=relaxed/relaxed",
            b"d=" + key.domain.encode("idna"),
            b"s=" + key.selector.encode("ascii"),
        ]

    def sign(self, message: bytes) -> bytes:
        """The ``DKIM-Signature`` header field (folded, ending in CRLF) for ``message``."""
        fields, body = _split_message(message)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())

        by_name: dict[bytes, list[bytes]] = {}
        for name, value in fields:
            lname = name.rstrip(b" \t").lower()
            if lname in self._header_names:
                by_name.setdefault(lname, []).append(_relaxed_header(name, value))
        signed: list[bytes] = []
        h_names: list[bytes] = []
        for lname in self._header_names:
            occurrences = by_name.get(lname)
            if not occurrences:
                continue
            # Verifiers take occurrences from the bottom up (RFC 6376 5.4.2).
            signed.extend(reversed(occurrences))
            h_names.extend([lname] * len(occurrences))
            if lname in self._oversign:
                h_names.append(lname)
        if not h_names:
            raise DkimError("message has none of the headers to sign")

        tags = list(self._prefix_tags)
        if self._timestamp:
            tags.append(b"t=%d" % int(self._clock()))
        tags += [b"h=" + b":".join(h_names), b"bh=" + body_hash, b"b="]
        head = b"DKIM-Signature:" + _fold(tags, len(b"DKIM-Signature:"))

        # The signature covers its own header with an empty b=, canonicalised like the others
        # and without the trailing CRLF (RFC 6376 3.7).
        to_sign = b"\r\n".join(signed) + b"\r\n" + _relaxed_header(*head.split(b":", 1))
        signature = base64.b64encode(self._sign_bytes(to_sign))
        return head + self._fold_b64(signature, head) + b"\r\n"

    def _sign_bytes(self, data: bytes) -> bytes:
        if isinstance(self._private_key, rsa.RSAPrivateKey):
            return self._private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # RFC 8463: Ed25519 signs the SHA-256 hash, not the data.
        return self._private_key.sign(hashlib.sha256(data).digest())

    @staticmethod
    def _fold_b64(signature: bytes, head: bytes) -> bytes:
        column = len(head) - head.rfind(b"\n") - 1
        first = max(76 - column, 8)
        parts = [signature[:first]]
        parts += [signature[i : i + 72] for i in range(first, len(signature), 72)]
        return b"\r\n ".join(parts)
