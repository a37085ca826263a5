"""The self-signed TLS certificate of ``edgecache up --tls-self-signed``, made with the
``cryptography`` library and kept in ``<data-dir>/tls/``::

    ca.pem        the private certificate authority: what clients trust
                  (``AWS_CA_BUNDLE=<data-dir>/tls/ca.pem``, boto3's ``verify=``)
    ca.key        its key (mode 0600): the next ``up`` signs a new gateway certificate
                  with it, so ``ca.pem`` stays valid for clients across restarts
    gateway.pem   the gateway's certificate (ECDSA P-256, ``serverAuth``), then ``ca.pem``
    gateway.key   its key (mode 0600)

A CA and a leaf rather than one self-signed leaf: clients that verify strictly (Python
3.13's default ``VERIFY_X509_STRICT``, Go) refuse a leaf that is its own trust anchor. The
gateway certificate names ``localhost``, ``127.0.0.1``, ``::1``, the host name and the
gateway's listen address (unless a wildcard); it is issued again when a name is missing or
it expires within 30 days.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgecache.launcher.datadir import write_private

__all__ = ["TLS_DIR", "SelfSigned", "default_names", "ensure_self_signed"]

TLS_DIR = "tls"
_CA_DAYS = 3650
_LEAF_DAYS = 397  # what browsers accept for a server certificate
_RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class SelfSigned:
    """Where the files are.

    Attributes:
        ca_file: the CA certificate (PEM): give it to clients.
        cert_file: the gateway's certificate chain (PEM): ``gateway.tls_cert_file``.
        key_file: the gateway's key (PEM): ``gateway.tls_key_file``.
        issued: whether a new gateway certificate was written by this call.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    issued: bool


def default_names(listen_host: str) -> list[str]:
    """The names the gateway certificate covers for a gateway listening on ``listen_host``."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    if listen_host and listen_host not in ("0.0.0.0", "::") and listen_host not in names:
        names.append(listen_host)
    return names


def ensure_self_signed(data_dir: Path, names: Iterable[str]) -> SelfSigned:
    """Make (or keep) the CA and the gateway certificate under ``<data_dir>/tls/``.

    Args:
        data_dir: the data dir of ``up``.
        names: DNS names and IP addresses the gateway certificate must cover.

    Raises:
        ValueError: a file there is not a certificate or key this module wrote.
    """
    directory = data_dir / TLS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_file, ca_key_file = directory / "ca.pem", directory / "ca.key"
    cert_file, key_file = directory / "gateway.pem", directory / "gateway.key"
    wanted = sorted(set(names))
    now = datetime.datetime.now(datetime.UTC)

    ca = _load_cert(ca_file)
    ca_key = _load_key(ca_key_file)
    if ca is None or ca_key is None or ca.not_valid_after_utc - now < _RENEW_BEFORE:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _issue_ca(ca_key, now)
        write_private(ca_key_file, _key_pem(ca_key))
        ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        leaf = None
    else:
        leaf = _load_cert(cert_file)
    if leaf is not None and _load_key(key_file) is not None and _covers(leaf, ca, wanted, now):
        return SelfSigned(ca_file, cert_file, key_file, issued=False)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _issue_leaf(key, ca, ca_key, wanted, now)
    write_private(key_file, _key_pem(key))
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(
        serialization.Encoding.PEM
    )
    cert_file.write_bytes(chain)
    return SelfSigned(ca_file, cert_file, key_file, issued=True)


def _load_cert(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC key written by edgecache up")
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _covers(
    leaf: x509.Certificate, ca: x509.Certificate, wanted: list[str], now: datetime.datetime
) -> bool:
    """Whether ``leaf`` was issued by ``ca``, names everything in ``wanted`` and stays valid
    for longer than the renewal margin."""
    if leaf.issuer != ca.subject or leaf.not_valid_after_utc - now < _RENEW_BEFORE:
        return False
    try:
        leaf.verify_directly_issued_by(ca)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    have |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return all(_canonical(n) in have for n in wanted)


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _issue_ca(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgecache"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"edgecache up CA ({socket.gethostname()})"),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _issue_leaf(
    key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: list[str],
    now: datetime.datetime,
) -> x509.Certificate:
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "edgecache")])
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
