"""SNS signature verification: real signed messages, tampered copies, certificate handling."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import pickle
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sesbeam.transforms.signatures import (
    SIGNATURE_FAILURES,
    CertificateStore,
    certificate_name,
    is_trusted_certificate_url,
    sns_signature_failure,
    string_to_sign,
    verify_sns_envelope,
)
from tests.conftest import PUBLIC_FIXTURES

SIGNED = PUBLIC_FIXTURES / "sns-envelope" / "derived"
REAL_CERT_URL = ("https://sns.us-east-2.amazonaws.com/"
                 "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem")
OWN_CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-" + "ab" * 16 + ".pem"


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signed_dir() -> Path:
    if not SIGNED.is_dir() or not list(SIGNED.glob("*.json")):
        pytest.skip(f"signed SNS messages not found at {SIGNED} (public fixtures live in "
                    "../shared beside the repository; set SESBEAM_PUBLIC_FIXTURES)")
    return SIGNED


@pytest.fixture(scope="module")
def signed(signed_dir) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(signed_dir.glob("*.json"))}


@pytest.fixture(scope="module")
def store(signed_dir) -> CertificateStore:
    return CertificateStore(signed_dir)


@pytest.fixture(scope="module")
def own_key():
    """A key and an already expired certificate, to sign messages of every Type."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc))
            .not_valid_after(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _sign(envelope: dict, key, version: str = "1") -> dict:
    env = dict(envelope, SignatureVersion=version)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(string_to_sign(env), padding.PKCS1v15(), algorithm)
    env["Signature"] = base64.b64encode(signature).decode()
    return env


def _notification(**extra) -> dict:
    env = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-inbound",
        "Subject": "Amazon SES Email Receipt Notification",
        "Message": json.dumps({"notificationType": "Received", "mail": {
            "source": "jöhn@example.com", "commonHeaders": {"subject": "line1\nline2 ✓"}}},
            ensure_ascii=False),
        "Timestamp": "2021-03-04T05:06:07.890Z",
        "SigningCertURL": OWN_CERT_URL,
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&x=1",
    }
    env.update(extra)
    return env


def _control(kind: str) -> dict:
    return {
        "Type": kind,
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a",
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-inbound",
        "Message": "You have chosen to subscribe to the topic ...\nTo confirm, visit the URL.",
        "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&T=1",
        "Timestamp": "2021-03-04T05:06:07.890Z",
        "SigningCertURL": OWN_CERT_URL,
    }


@pytest.fixture(scope="module")
def own_store(own_key) -> CertificateStore:
    return CertificateStore(pems={certificate_name(OWN_CERT_URL): own_key[1]})


def _lambda_style(env: dict) -> dict:
    renames = {"SigningCertURL": "SigningCertUrl", "UnsubscribeURL": "UnsubscribeUrl",
               "SubscribeURL": "SubscribeUrl"}
    return {renames.get(k, k): v for k, v in env.items()}


# -- the real signed messages -------------------------------------------------------------

def test_all_real_messages_verify(signed, store):
    assert len(signed) == 10
    for name, env in signed.items():
        assert sns_signature_failure(env, store) is None, name
    versions = {env["SignatureVersion"] for env in signed.values()}
    assert versions == {"1", "2"}
    # Both key spellings and the three Subject shapes are among them.
    assert any("SigningCertUrl" in env for env in signed.values())
    assert any("SigningCertURL" in env for env in signed.values())
    assert any(env.get("Subject", "") is None for env in signed.values())


def test_store_indexes_by_name_and_by_hex_id(signed_dir, store):
    # The saved file is not named like the URL: found through its hex id.
    assert store.names == ["php-validator-signing-cert-7ff5318490ec183fbaddaa2a969abfda.pem"]
    assert store.public_key(REAL_CERT_URL) is not None
    pem = (signed_dir / store.names[0]).read_bytes()
    by_name = CertificateStore(pems={certificate_name(REAL_CERT_URL): pem})
    assert by_name.public_key(REAL_CERT_URL) is not None
    other = REAL_CERT_URL.replace("7ff5318490ec183fbaddaa2a969abfda", "0" * 32)
    assert store.public_key(other) is None


def test_directory_store(tmp_path, own_key):
    (tmp_path / certificate_name(OWN_CERT_URL)).write_bytes(own_key[1])
    (tmp_path / "README.txt").write_text("not a certificate")
    (tmp_path / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnope\n")
    store = CertificateStore(tmp_path)
    assert store.names == ["SimpleNotificationService-" + "ab" * 16 + ".pem", "garbage.pem"]
    key, _ = own_key
    assert verify_sns_envelope(_sign(_notification(), key), store) is None
    broken = OWN_CERT_URL.rsplit("/", 1)[0] + "/garbage.pem"
    assert verify_sns_envelope(_sign(_notification(SigningCertURL=broken), key),
                               store) == "certificate_unavailable"
    with pytest.raises(FileNotFoundError):
        CertificateStore(tmp_path / "missing")


@pytest.mark.parametrize("change, reason", [
    ({"Message": "Hello world!"}, "bad_signature"),
    ({"Subject": "Hello world"}, "bad_signature"),  # added to a message signed without one
    ({"MessageId": "00000000-518f-5dd3-9163-81d851212f3a"}, "bad_signature"),
    ({"Timestamp": "2022-07-28T21:23:58.318Z"}, "bad_signature"),
    ({"TopicArn": "arn:aws:sns:us-east-2:295079676684:other"}, "bad_signature"),
    ({"SignatureVersion": "2"}, "bad_signature"),  # SHA-1 signature checked as SHA-256
    ({"SignatureVersion": "3"}, "unsupported_signature_version"),
    ({"SignatureVersion": 1}, "unsupported_signature_version"),
    ({"SignatureVersion": None}, "unsupported_signature_version"),
    ({"Signature": ""}, "missing_signature"),
    ({"Signature": None}, "missing_signature"),
    ({"Signature": "not base64 !"}, "bad_signature"),
    ({"Message": {"parsed": "json"}}, "malformed_envelope"),
    ({"Type": "Other"}, "malformed_envelope"),
    ({"SigningCertURL": REAL_CERT_URL.replace("https:", "http:")}, "untrusted_certificate_url"),
    ({"SigningCertURL": REAL_CERT_URL.replace("amazonaws.com", "amazonaws.com.evil.example")},
     "untrusted_certificate_url"),
    ({"SigningCertURL": REAL_CERT_URL.replace("sns.us-east-2", "s3.us-east-2")},
     "untrusted_certificate_url"),
    ({"SigningCertURL": REAL_CERT_URL.replace("sns.us-east-2.amazonaws.com",
                                              "sns.us-east-2.amazonaws.com@evil.example")},
     "untrusted_certificate_url"),
    ({"SigningCertURL": REAL_CERT_URL.replace(".com/", ".com:8443/")},
     "untrusted_certificate_url"),
    ({"SigningCertURL": REAL_CERT_URL.replace(".pem", ".pem.txt")}, "untrusted_certificate_url"),
    ({"SigningCertURL": REAL_CERT_URL + "?x=.pem"}, "untrusted_certificate_url"),
    ({"SigningCertURL": None}, "untrusted_certificate_url"),
    ({"SigningCertURL": REAL_CERT_URL.replace("7ff5318490ec183fbaddaa2a969abfda", "1" * 32)},
     "certificate_unavailable"),
])
def test_tampered_http_style(signed, store, change, reason):
    env = dict(signed["php-validator-http-sigv1-no-subject.json"], **change)
    assert verify_sns_envelope(env, store) == reason
    assert reason in SIGNATURE_FAILURES


def test_tampered_subject_and_missing_keys(signed, store):
    env = copy.deepcopy(signed["php-validator-http-sigv2-with-subject.json"])
    assert verify_sns_envelope(env, store) is None
    assert verify_sns_envelope(dict(env, Subject="Hello World"), store) == "bad_signature"
    assert verify_sns_envelope({k: v for k, v in env.items() if k != "Subject"},
                               store) == "bad_signature"
    assert verify_sns_envelope({k: v for k, v in env.items() if k != "Signature"},
                               store) == "missing_signature"
    assert verify_sns_envelope({k: v for k, v in env.items() if k != "SignatureVersion"},
                               store) == "unsupported_signature_version"
    assert verify_sns_envelope({k: v for k, v in env.items() if k != "SigningCertURL"},
                               store) == "untrusted_certificate_url"
    assert verify_sns_envelope("not a dict", store) == "malformed_envelope"  # type: ignore


@pytest.mark.parametrize("bit", [0, 7, 100, 255 * 8 - 1])
def test_signature_bit_flips(signed, store, bit):
    for name in ("php-validator-http-sigv1-with-subject.json",
                 "php-validator-lambda-style-sigv2-subject-null.json"):
        env = dict(signed[name])
        raw = bytearray(base64.b64decode(env["Signature"]))
        raw[bit // 8] ^= 1 << (bit % 8)
        env["Signature"] = base64.b64encode(bytes(raw)).decode()
        assert verify_sns_envelope(env, store) == "bad_signature", name


def test_lambda_style_casing(signed, store):
    lam = signed["php-validator-lambda-style-sigv1-subject-null.json"]
    assert "SigningCertUrl" in lam and lam["Subject"] is None
    assert verify_sns_envelope(lam, store) is None
    # The same message with HTTP spelling, and with the null Subject removed.
    http = {("SigningCertURL" if k == "SigningCertUrl" else k): v for k, v in lam.items()}
    assert verify_sns_envelope(http, store) is None
    assert verify_sns_envelope({k: v for k, v in lam.items() if k != "Subject"}, store) is None
    # Tampering works the same way with Lambda keys.
    assert verify_sns_envelope(dict(lam, Subject="x"), store) == "bad_signature"
    bad_url = dict(lam, SigningCertUrl=lam["SigningCertUrl"].replace("https", "http"))
    assert verify_sns_envelope(bad_url, store) == "untrusted_certificate_url"
    # The input is not modified.
    assert lam["Subject"] is None and "SigningCertUrl" in lam


def test_string_to_sign_layout():
    env = _lambda_style(_control("SubscriptionConfirmation"))
    text = string_to_sign(env).decode()
    keys = [line for i, line in enumerate(text.split("\n")) if i % 2 == 0 and line][:1]
    assert keys == ["Message"]
    assert text.startswith("Message\nYou have chosen")
    assert "\nSubscribeURL\nhttps://sns.eu-west-1" in text
    assert "SigningCertURL" not in text and "Unsubscribe" not in text
    assert text.endswith("Type\nSubscriptionConfirmation\n")
    note = string_to_sign(_notification(Subject=None))
    assert b"Subject" not in note
    assert "line1\\nline2 ✓".encode() in note  # the Message string as is, not re-encoded
    with pytest.raises(ValueError):
        string_to_sign({"Type": "Notification", "Message": 5})


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("kind", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_control_messages(own_key, own_store, version, kind):
    key, _ = own_key
    env = _sign(_control(kind), key, version)
    assert verify_sns_envelope(env, own_store) is None
    assert verify_sns_envelope(_lambda_style(env), own_store) is None
    assert verify_sns_envelope(dict(env, Token="x"), own_store) == "bad_signature"
    assert verify_sns_envelope(dict(env, SubscribeURL="https://evil.example/"),
                               own_store) == "bad_signature"
    # Unsigned fields may change.
    assert verify_sns_envelope(dict(env, UnsubscribeURL="whatever"), own_store) is None


@pytest.mark.parametrize("version", ["1", "2"])
def test_own_notifications_and_expired_certificate(own_key, own_store, version):
    key, _ = own_key
    env = _sign(_notification(), key, version)
    assert verify_sns_envelope(env, own_store) is None  # the certificate expired in 2020
    no_subject = _sign(_notification(Subject=None), key, version)
    assert verify_sns_envelope(no_subject, own_store) is None
    assert verify_sns_envelope({k: v for k, v in no_subject.items() if k != "Subject"},
                               own_store) is None
    assert verify_sns_envelope(dict(env, Message=env["Message"].replace("line2", "line3")),
                               own_store) == "bad_signature"
    # Extra unsigned fields (MessageAttributes) do not matter.
    attrs = {"MessageAttributes": {"a": {"Type": "String", "Value": "b"}}}
    assert verify_sns_envelope(dict(env, **attrs), own_store) is None


def test_certificate_url_rules():
    assert is_trusted_certificate_url(REAL_CERT_URL)
    assert is_trusted_certificate_url("https://sns.cn-north-1.amazonaws.com.cn/x.pem")
    assert is_trusted_certificate_url("https://SNS.US-EAST-1.AMAZONAWS.COM/a/b.pem")
    assert is_trusted_certificate_url("https://sns.us-east-1.amazonaws.com:443/x.pem")
    for bad in ("https://sns.us.amazonaws.com/x.pem",  # region shorter than 3
                "https://sns.us-east-1.amazonaws.com/x.pem\n",
                "https://sns.us-east-1.amaz\tonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com\\@evil.example/x.pem",
                "https://sns.us-east-1.amazonaws.com.cn.evil/x.pem",
                "https://xsns.us-east-1.amazonaws.com/x.pem",
                "https://sns.us_east_1.amazonaws.com/x.pem",
                "ftp://sns.us-east-1.amazonaws.com/x.pem",
                "https://sns.us-east-1.amazonaws.com/x.pem#frag",
                "https://sns.us-east-1.amazonaws.com:99999/x.pem",
                "//sns.us-east-1.amazonaws.com/x.pem", "", None, 5):
        assert not is_trusted_certificate_url(bad), bad


# -- fetching -----------------------------------------------------------------------------

class _Fetcher:
    def __init__(self, pem: bytes | None, fail: bool = False):
        self.pem, self.fail, self.calls = pem, fail, []

    def __call__(self, url: str, timeout: float) -> bytes:
        self.calls.append((url, timeout))
        if self.fail:
            raise OSError("connection refused")
        return self.pem


def test_fetch_path_cache_and_trust(own_key):
    key, pem = own_key
    fetcher = _Fetcher(pem)
    store = CertificateStore(allow_fetch=True, fetcher=fetcher, timeout=3)
    env = _sign(_notification(), key, "2")
    for _ in range(5):
        assert verify_sns_envelope(env, store) is None
    assert fetcher.calls == [(OWN_CERT_URL, 3.0)]  # fetched once, then cached
    # Never fetched from an untrusted URL, whatever the envelope says.
    for url in ("http://sns.eu-west-1.amazonaws.com/a.pem", "https://evil.example/a.pem"):
        assert verify_sns_envelope(dict(env, SigningCertURL=url),
                                   store) == "untrusted_certificate_url"
        assert store.pem(url) is None
    assert len(fetcher.calls) == 1


def test_fetch_disabled_and_failures(own_key):
    key, pem = own_key
    env = _sign(_notification(), key)
    off = _Fetcher(pem)
    assert verify_sns_envelope(env, CertificateStore(fetcher=off)) == "certificate_unavailable"
    assert off.calls == []

    failing = _Fetcher(pem, fail=True)
    store = CertificateStore(allow_fetch=True, fetcher=failing, retry_after=60)
    for _ in range(3):
        assert verify_sns_envelope(env, store) == "certificate_unavailable"
    assert len(failing.calls) == 1  # the failure is remembered
    retry_now = CertificateStore(allow_fetch=True, fetcher=failing, retry_after=0)
    for _ in range(2):
        verify_sns_envelope(env, retry_now)
    assert len(failing.calls) == 3

    capped = _Fetcher(pem, fail=True)
    store = CertificateStore(allow_fetch=True, fetcher=capped, max_fetches=2)
    for i in range(5):
        url = OWN_CERT_URL.replace("ab" * 16, f"{i:032x}")
        assert verify_sns_envelope(dict(env, SigningCertURL=url),
                                   store) == "certificate_unavailable"
    assert len(capped.calls) == 2

    junk = _Fetcher(b"<html>not a certificate</html>")
    store = CertificateStore(allow_fetch=True, fetcher=junk)
    assert verify_sns_envelope(env, store) == "certificate_unavailable"


def test_local_certificates_win_over_fetching(own_key, signed_dir):
    key, pem = own_key
    fetcher = _Fetcher(pem, fail=True)
    store = CertificateStore(signed_dir, allow_fetch=True, fetcher=fetcher,
                             pems={certificate_name(OWN_CERT_URL): pem})
    assert verify_sns_envelope(_sign(_notification(), key), store) is None
    assert fetcher.calls == []


def test_default_fetcher_refuses_untrusted_urls():
    from sesbeam.transforms.signatures import fetch_certificate

    for url in ("http://sns.us-east-1.amazonaws.com/x.pem", "https://127.0.0.1/x.pem"):
        with pytest.raises(ValueError):
            fetch_certificate(url, 0.1)


# -- pickling (Beam ships the store to workers) ---------------------------------------------

def test_store_pickles_with_its_certificates(tmp_path, signed, signed_dir, own_key):
    key, pem = own_key
    store = CertificateStore(signed_dir, pems={certificate_name(OWN_CERT_URL): pem})
    env = signed["php-validator-http-sigv2-no-subject.json"]
    assert verify_sns_envelope(env, store) is None  # parses and caches the key
    clone = pickle.loads(pickle.dumps(store))
    assert clone.names == store.names
    assert verify_sns_envelope(env, clone) is None
    assert verify_sns_envelope(_sign(_notification(), key), clone) is None
    config = CertificateStore.from_config({"directory": str(signed_dir), "allow_fetch": False})
    assert verify_sns_envelope(env, pickle.loads(pickle.dumps(config))) is None
