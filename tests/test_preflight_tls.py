"""A provided TLS certificate and key are checked as a pair on the controller,
before anything is copied to a host."""
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from test_preflight import preflight


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(key, days_valid: int) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlflow.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + datetime.timedelta(days=days_valid)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(now, not_after) - datetime.timedelta(days=2)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def tls_files(tmp_path):
    def write(cert: bytes, key: bytes) -> dict:
        (tmp_path / "cert.pem").write_bytes(cert)
        (tmp_path / "key.pem").write_bytes(key)
        return {"mlflow_proxy_tls_mode": "provided",
                "mlflow_proxy_tls_cert_src": str(tmp_path / "cert.pem"),
                "mlflow_proxy_tls_key_src": str(tmp_path / "key.pem")}
    return write


def test_matching_pair_passes(tls_files):
    key = _key()
    result = preflight(tls_files(_cert(key, 90), _pem(key)))
    assert result.returncode == 0, result.stdout[-3000:]


def test_key_of_another_certificate_is_refused(tls_files):
    key = _key()
    other_key_pem = _pem(_key())
    result = preflight(tls_files(_cert(key, 90), other_key_pem))
    assert result.returncode != 0
    out = " ".join(result.stdout.split())
    assert "does not belong to the certificate (mlflow_proxy_tls_cert_src" in out
    # The key itself is never printed.
    assert other_key_pem.decode().splitlines()[1] not in result.stdout


def test_expired_certificate_is_refused(tls_files):
    key = _key()
    result = preflight(tls_files(_cert(key, -1), _pem(key)))
    assert result.returncode != 0
    assert "mlflow_proxy_tls_cert_content) expired on" in " ".join(result.stdout.split())
