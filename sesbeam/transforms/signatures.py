"""Verify the signature of Amazon SNS envelopes (HTTP/SQS style and Lambda ``Sns`` style).

Pure functions and one small certificate store; no Beam. The recipe is the one AWS's own
validators use (aws-php-sns-message-validator, aws-js-sns-message-validator):

1. ``SignatureVersion`` must be ``"1"`` (RSA PKCS#1 v1.5 with SHA-1, the topic default) or
   ``"2"`` (SHA-256).
2. The signing certificate URL must be ``https://sns.<region>.amazonaws.com[.cn]/....pem``
   (host ``^sns\\.[a-zA-Z0-9\\-]{3,}\\.amazonaws\\.com(\\.cn)?$``, no user, port 443 only).
3. The string to sign is ``key + "\\n" + value + "\\n"`` for each signed key present, in a
   fixed order: ``Message, MessageId, Subject, Timestamp, TopicArn, Type`` for a
   ``Notification`` (``Subject`` only when present and not null), ``Message, MessageId,
   SubscribeURL, Timestamp, Token, TopicArn, Type`` for ``SubscriptionConfirmation`` and
   ``UnsubscribeConfirmation``.
4. ``Signature`` is base64; it is checked against the public key of the certificate.

Lambda-style keys (``SigningCertUrl``, ``SubscribeUrl``, ``UnsubscribeUrl``) are accepted.

Certificates come from a ``CertificateStore``: PEM files in a directory (archives must be
checked against the historical certificates that signed them; SNS rotates them), and, when
allowed, fetched over HTTPS from the SNS hosts only. Certificate validity dates are never
checked: an archive signed in 2021 stays verifiable after the certificate expired.

``verify_sns_envelope(envelope, store)`` returns None when the signature is valid, else one
of the reasons in ``SIGNATURE_FAILURES``; ``sns_signature_failure`` also gives a detail text.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
import os
import re
import ssl
import threading
import time
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "SIGNATURE_FAILURES",
    "CertificateStore",
    "certificate_name",
    "fetch_certificate",
    "is_trusted_certificate_url",
    "sns_signature_failure",
    "string_to_sign",
    "verify_sns_envelope",
]

_LOG = logging.getLogger(__name__)

#: Why an SNS envelope failed verification.
SIGNATURE_FAILURES = {
    "missing_signature": "the envelope has no Signature",
    "unsupported_signature_version": "SignatureVersion is not \"1\" or \"2\"",
    "malformed_envelope": "unknown Type, or a signed field that is not a string",
    "untrusted_certificate_url": "SigningCertURL is not an https://sns.<region>.amazonaws.com "
                                 "... .pem URL",
    "certificate_unavailable": "the signing certificate is neither in the certificate "
                               "directory nor fetchable",
    "bad_signature": "the signature does not match the signed fields",
}

_CERT_HOST = re.compile(r"sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?")
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONTROL_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn",
                 "Type")
_SIGNED_KEYS = {
    "Notification": _NOTIFICATION_KEYS,
    "SubscriptionConfirmation": _CONTROL_KEYS,
    "UnsubscribeConfirmation": _CONTROL_KEYS,
}
#: Lambda ``Records[].Sns`` spelling -> HTTP/SQS spelling.
_LAMBDA_KEYS = {
    "SigningCertUrl": "SigningCertURL",
    "SubscribeUrl": "SubscribeURL",
    "UnsubscribeUrl": "UnsubscribeURL",
}
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
#: A hex id in a certificate file name (``SimpleNotificationService-<32 hex>.pem``).
_HEX_ID = re.compile(r"([0-9a-fA-F]{32,})\.pem$")
#: Largest certificate accepted from the network (SNS certificates are about 2 KB).
MAX_CERTIFICATE_BYTES = 64 * 1024

#: ``fetcher(url, timeout_seconds) -> PEM bytes``; raises on any failure.
Fetcher = Callable[[str, float], bytes]


class _Failure(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# -- the recipe -------------------------------------------------------------------------------

def _canonical(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope with HTTP/SQS key spellings and a null ``Subject`` dropped."""
    env = dict(envelope)
    for lambda_key, key in _LAMBDA_KEYS.items():
        if lambda_key in env:
            value = env.pop(lambda_key)
            env.setdefault(key, value)
    if env.get("Subject", "") is None:
        del env["Subject"]
    return env


def string_to_sign(envelope: Mapping[str, Any]) -> bytes:
    """The bytes SNS signed for this envelope (either key spelling).

    Raises ``ValueError`` for an unknown ``Type`` or a signed field that is not a string.
    """
    env = _canonical(envelope)
    keys = _SIGNED_KEYS.get(env.get("Type"))  # type: ignore[arg-type]
    if keys is None:
        raise ValueError(f"cannot sign Type {str(env.get('Type'))[:40]!r}")
    parts = []
    for key in keys:
        if key not in env:
            continue
        value = env[key]
        if not isinstance(value, str):
            raise ValueError(f"{key} is a {type(value).__name__}, not a string")
        parts.append(f"{key}\n{value}\n")
    return "".join(parts).encode("utf-8", "surrogatepass")


def is_trusted_certificate_url(url: Any) -> bool:
    """True for ``https://sns.<region>.amazonaws.com[.cn]/<...>.pem`` (port 443, no user,
    no query or fragment)."""
    return _url_problem(url) is None


def _url_problem(url: Any) -> str | None:
    if not isinstance(url, str) or not url:
        return "no SigningCertURL"
    if _UNSAFE_URL_CHARS.search(url):  # urlsplit silently drops tabs and newlines
        return "SigningCertURL contains spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "SigningCertURL does not parse"
    if parts.scheme.lower() != "https":
        return f"SigningCertURL scheme is {parts.scheme or 'missing'!r}, not https"
    host = parts.hostname or ""
    if parts.username is not None or parts.password is not None or port not in (None, 443):
        return "SigningCertURL has a user or a port"
    if not _CERT_HOST.fullmatch(host):
        return f"SigningCertURL host {host[:80]!r} is not an SNS host"
    if not parts.path.endswith(".pem") or parts.query or parts.fragment:
        return "SigningCertURL path does not end in .pem"
    return None


def certificate_name(url: str) -> str:
    """Last path component of a certificate URL: the file name in a certificate directory."""
    return urlsplit(url).path.rsplit("/", 1)[-1]


def sns_signature_failure(envelope: Mapping[str, Any],
                          store: "CertificateStore") -> tuple[str, str] | None:
    """None when the signature of ``envelope`` is valid, else ``(reason, detail)``.

    ``reason`` is a key of ``SIGNATURE_FAILURES``; ``detail`` a short human-readable text.
    """
    try:
        _verify(envelope, store)
    except _Failure as f:
        return f.reason, f.detail
    return None


def verify_sns_envelope(envelope: Mapping[str, Any], store: "CertificateStore") -> str | None:
    """None when the signature of ``envelope`` is valid, else a key of ``SIGNATURE_FAILURES``."""
    failure = sns_signature_failure(envelope, store)
    return None if failure is None else failure[0]


def _verify(envelope: Mapping[str, Any], store: "CertificateStore") -> None:
    if not isinstance(envelope, Mapping):
        raise _Failure("malformed_envelope", "the envelope is not an object")
    env = _canonical(envelope)
    signature = env.get("Signature")
    if not isinstance(signature, str) or not signature:
        raise _Failure("missing_signature", "no Signature")
    version = env.get("SignatureVersion")
    algorithm = _HASHES.get(version) if isinstance(version, str) else None
    if algorithm is None:
        raise _Failure("unsupported_signature_version",
                       f"SignatureVersion {str(version)[:20]!r}")
    try:
        signed = string_to_sign(env)
    except ValueError as e:
        raise _Failure("malformed_envelope", str(e)) from None
    url = env.get("SigningCertURL")
    problem = _url_problem(url)
    if problem is not None:
        raise _Failure("untrusted_certificate_url", problem)
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise _Failure("bad_signature", "Signature is not base64") from None
    key = store.public_key(url)
    if key is None:
        raise _Failure("certificate_unavailable", f"no certificate {certificate_name(url)}")
    try:
        key.verify(raw_signature, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise _Failure("bad_signature",
                       f"signature (version {version}) does not match") from None


# -- certificates -----------------------------------------------------------------------------

def fetch_certificate(url: str, timeout: float) -> bytes:
    """GET a certificate over HTTPS (system trust store, hostname checked, no redirects).

    Only trusted SNS certificate URLs are fetched; raises ``OSError``/``ValueError`` on
    any failure.
    """
    problem = _url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    parts = urlsplit(url)
    conn = http.client.HTTPSConnection(parts.hostname, 443, timeout=timeout,
                                       context=ssl.create_default_context())
    try:
        conn.request("GET", parts.path, headers={"Accept": "application/x-pem-file, */*"})
        response = conn.getresponse()
        body = response.read(MAX_CERTIFICATE_BYTES + 1)
        if response.status != 200:
            raise OSError(f"HTTP {response.status} for {url}")
        if len(body) > MAX_CERTIFICATE_BYTES:
            raise ValueError(f"certificate at {url} is larger than {MAX_CERTIFICATE_BYTES} bytes")
        return body
    finally:
        conn.close()


class CertificateStore:
    """Signing certificates by URL: from a directory, then (optionally) over HTTPS.

    - ``directory``: every ``*.pem`` file in it (not recursive) is indexed by its file name,
      which for SNS certificates is the last path component of the URL
      (``SimpleNotificationService-<hex>.pem``), and also by the hex id at the end of its
      name, so ``my-copy-<hex>.pem`` serves ``.../SimpleNotificationService-<hex>.pem``.
      Local paths, or any ``scheme://`` location Apache Beam's ``FileSystems`` can list. The
      files are read when the store is created and travel with it when it is pickled, so
      a store built on the launching machine works on remote workers.
    - ``pems``: extra ``{file name: PEM bytes}``.
    - ``allow_fetch``: fetch certificates missing locally with ``fetcher`` (default
      ``fetch_certificate``: HTTPS GET, ``timeout`` seconds), only from trusted SNS URLs.
      Fetched certificates are cached in the process; failures are remembered for
      ``retry_after`` seconds so one unreachable URL does not cost a timeout per message,
      and at most ``max_fetches`` fetches are tried per process (SNS uses a handful of
      certificates; an archive naming thousands is not worth thousands of connections).

    Validity dates are never checked. Picklable (the parsed keys and the lock are rebuilt);
    a store with a custom ``fetcher`` is picklable when the fetcher is.
    """

    def __init__(self, directory: str | os.PathLike | None = None, *,
                 allow_fetch: bool = False, timeout: float = 10.0,
                 fetcher: Fetcher | None = None, retry_after: float = 300.0,
                 max_fetches: int = 64, pems: Mapping[str, bytes] | None = None):
        self.directory = os.fspath(directory) if directory is not None else None
        self.allow_fetch = bool(allow_fetch)
        self.timeout = float(timeout)
        self.fetcher = fetcher
        self.retry_after = float(retry_after)
        self.max_fetches = int(max_fetches)
        self._pems: dict[str, bytes] = {}
        if self.directory is not None:
            for name, pem in _read_pem_directory(self.directory).items():
                self.add_pem(name, pem)
        for name, pem in (pems or {}).items():
            self.add_pem(name, pem)
        self._fetched: dict[str, bytes] = {}
        self._init_runtime()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "CertificateStore":
        """A store from plain options: ``{"directory", "allow_fetch", "timeout"}``."""
        return cls(config.get("directory"), allow_fetch=config.get("allow_fetch", False),
                   timeout=config.get("timeout", 10.0))

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, rsa.RSAPublicKey | None] = {}
        self._failed: dict[str, float] = {}  # URL -> monotonic time of the failed fetch
        self.fetches = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_lock", "_keys", "_failed", "fetches"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return (f"CertificateStore(directory={self.directory!r}, certificates={len(self.names)}, "
                f"allow_fetch={self.allow_fetch})")

    def add_pem(self, name: str, pem: bytes) -> None:
        """Index one PEM under its file ``name`` (and the hex id at the end of the name)."""
        self._pems[name] = pem
        match = _HEX_ID.search(name)
        if match:
            self._pems.setdefault(match.group(1).lower(), pem)

    @property
    def names(self) -> list[str]:
        """File names of the locally held certificates."""
        return sorted(n for n in self._pems if n.endswith(".pem"))

    def pem(self, url: str) -> bytes | None:
        """PEM bytes of the certificate at a trusted ``url``, or None."""
        if not is_trusted_certificate_url(url):
            return None
        name = certificate_name(url)
        pem = self._pems.get(name)
        if pem is None:
            match = _HEX_ID.search(name)
            pem = self._pems.get(match.group(1).lower()) if match else None
        if pem is not None:
            return pem
        if not self.allow_fetch:
            return None
        return self._fetch(url)

    def _fetch(self, url: str) -> bytes | None:
        with self._lock:
            if url in self._fetched:
                return self._fetched[url]
            failed_at = self._failed.get(url)
            if failed_at is not None and time.monotonic() - failed_at < self.retry_after:
                return None
            if self.fetches >= self.max_fetches:
                return None
            self.fetches += 1
            fetcher = self.fetcher or fetch_certificate
            try:
                pem = fetcher(url, self.timeout)
                _load_public_key(pem)  # only cache what parses
            except Exception as e:  # noqa: BLE001 - any failure means "unavailable"
                _LOG.warning("cannot fetch SNS signing certificate %s: %s", url, e)
                self._failed[url] = time.monotonic()
                return None
            self._fetched[url] = pem
            return pem

    def public_key(self, url: str) -> rsa.RSAPublicKey | None:
        """RSA public key of the certificate at a trusted ``url``, or None."""
        if url in self._keys:
            return self._keys[url]
        pem = self.pem(url)
        if pem is None:
            return None
        try:
            key = _load_public_key(pem)
        except ValueError as e:
            _LOG.warning("signing certificate for %s is unusable: %s", url, e)
            key = None
        self._keys[url] = key
        return key


def _load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    try:
        cert = x509.load_pem_x509_certificate(pem)
        key = cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not a PEM certificate: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"not an RSA key: {type(key).__name__}")
    return key


def _read_pem_directory(directory: str) -> dict[str, bytes]:
    """``{file name: bytes}`` of the ``*.pem`` files directly in ``directory``."""
    if "://" in directory:
        from apache_beam.io.filesystems import FileSystems

        pattern = FileSystems.join(directory.rstrip("/"), "*.pem")
        found = {}
        for metadata in FileSystems.match([pattern])[0].metadata_list:
            with FileSystems.open(metadata.path) as f:
                found[metadata.path.rstrip("/").rsplit("/", 1)[-1]] = f.read()
        return found
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"certificate directory {directory!r} does not exist")
    found = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.endswith(".pem") and entry.is_file():
            with open(entry.path, "rb") as f:
                found[entry.name] = f.read()
    return found
