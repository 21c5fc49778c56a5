"""Deployment identities: a private CA, the server's TLS certificate, and site key pairs.

TLS lets a site know it talks to the real server (the CA is private to the federation, so
no public CA can vouch for an impostor). Node-authentication key pairs let the server know
which site is connecting: each site keeps its private key, the coordinator registers the
public key. Everything is ECDSA P-384, the curve Flower's node authentication uses. Private
keys are written 0600 and atomically, encrypted under the party's passphrase
(privacy/keystore.py); existing identities are never replaced silently.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from privacy import keystore
from privacy.atomic import atomic_write_bytes
from privacy.errors import FedVaultError
from privacy.keystore import check_private_file, private_key_bytes, read_file

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
CURVE = ec.SECP384R1
CA_DAYS = 3650
SERVER_DAYS = 825
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1",)


@dataclass(frozen=True)
class CertificatePaths:
    """Where one certificate set lives (all inside one directory)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.directory / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY


@dataclass(frozen=True)
class NodeKeyPair:
    """A site's node-authentication key files and the public key's fingerprint."""

    private_key: Path
    public_key: Path
    fingerprint: str


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedVault"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise FedVaultError(f"not an IP address: {text!r}") from None


def _valid_dns_name(name: str) -> bool:
    labels = name.rstrip(".").split(".")
    return 0 < len(name) <= 253 and all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )


def subject_alt_names(server_name: str, ips: Sequence[str] = ()) -> x509.SubjectAlternativeName:
    """SANs for the server certificate: the name, the IPs, and always localhost/127.0.0.1.

    The loopback entries are required: the SuperLink's own ServerApp runner and the local
    reverse proxy reach the SuperLink over 127.0.0.1 and verify its certificate.
    """
    dns: list[str] = []
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    try:
        addresses.append(ipaddress.ip_address(server_name))
    except ValueError:
        if not _valid_dns_name(server_name):
            raise FedVaultError(f"not a valid host name: {server_name!r}") from None
        dns.append(server_name.lower())
    addresses.extend(_parse_ip(ip) for ip in ips)
    dns.extend(LOOPBACK_NAMES)
    addresses.extend(ipaddress.ip_address(ip) for ip in LOOPBACK_IPS)
    general: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns)]
    general += [x509.IPAddress(a) for a in dict.fromkeys(addresses)]
    return x509.SubjectAlternativeName(general)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def create_ca(
    common_name: str = "FedVault federation CA", days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA allowed to sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(CURVE())
    public = key.public_key()
    start = _now() - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
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
        .sign(key, hashes.SHA384())
    )
    return key, cert


def issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    server_name: str,
    ips: Sequence[str] = (),
    days: int = SERVER_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new server key and a TLS server certificate for it, signed by the CA."""
    sans = subject_alt_names(server_name, ips)
    key = ec.generate_private_key(CURVE())
    public = key.public_key()
    start = _now() - datetime.timedelta(minutes=5)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(server_name))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(sans, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_all(files: Sequence[tuple[Path, bytes, int]]) -> None:
    """Write every file atomically; on failure remove the ones this call already wrote."""
    written: list[Path] = []
    for path, data, mode in files:
        try:
            atomic_write_bytes(path, data, mode)
        except OSError as exc:
            for done in written:
                done.unlink(missing_ok=True)
            raise FedVaultError(f"cannot write {path}: {exc.strerror}") from None
        written.append(path)


def init_certificates(
    out_dir: str | os.PathLike[str],
    server_name: str,
    ips: Sequence[str] = (),
    force: bool = False,
    passphrase: bytes | None = None,
) -> CertificatePaths:
    """Create a CA and a server certificate for `server_name` (+ `ips`) in `out_dir`.

    Both keys are encrypted under `passphrase`. The CA key is never stored unencrypted:
    whoever reads it can mint a certificate for any name. Without a passphrase the CA is a
    throwaway one (as for a SuperNode's Runtime API): its key is sealed under random bytes
    nobody keeps, so it can sign nothing more, and the server key is unencrypted for the one
    process that reads it. Refuses to replace an existing CA unless `force`: replacing it
    locks out every site that trusts the old one.
    """
    paths = CertificatePaths(Path(out_dir))
    subject_alt_names(server_name, ips)
    if paths.directory.exists() and not paths.directory.is_dir():
        raise FedVaultError(f"not a directory: {paths.directory}")
    if not force and (paths.ca_cert.exists() or paths.ca_key.exists()):
        raise FedVaultError(
            f"a CA already exists in {paths.directory}; pass --force to replace it "
            "(every site must then get the new ca.crt)"
        )
    ca_key, ca_cert = create_ca()
    server_key, server_cert = issue_server_certificate(ca_key, ca_cert, server_name, ips)
    ca_passphrase = passphrase if passphrase is not None else os.urandom(32)
    paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_all(
        [
            (paths.ca_key, private_key_bytes(ca_key, ca_passphrase), 0o600),
            (paths.server_key, private_key_bytes(server_key, passphrase), 0o600),
            (paths.server_cert, _cert_pem(server_cert), 0o644),
            (paths.ca_cert, _cert_pem(ca_cert), 0o644),
        ]
    )
    return paths


def load_certificate(path: str | os.PathLike[str], what: str = "certificate") -> x509.Certificate:
    """Read a PEM certificate; a missing or corrupt file is a FedVaultError."""
    data = read_file(Path(path), what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise FedVaultError(f"{what} {path} is not a PEM certificate") from None


def load_private_key(
    path: str | os.PathLike[str], what: str = "private key", passphrase: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """Read an EC private key (PEM or OpenSSH; encrypted: passphrase given or from the
    environment)."""
    key = keystore.load_private_key(path, what, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FedVaultError(f"{what} {path} is not an EC key")
    return key


def verify_server_certificate(
    ca_cert: x509.Certificate, server_cert: x509.Certificate, server_key: ec.EllipticCurvePrivateKey
) -> None:
    """Check the server certificate is signed by the CA, current, and matches its key."""
    ca_key = ca_cert.public_key()
    if not isinstance(ca_key, ec.EllipticCurvePublicKey):
        raise FedVaultError("the CA certificate does not hold an EC key")
    try:
        server_cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise FedVaultError("the server certificate is not signed by this CA") from None
    now = _now()
    if not server_cert.not_valid_before_utc <= now <= server_cert.not_valid_after_utc:
        raise FedVaultError(
            f"the server certificate is not valid now (valid "
            f"{server_cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{server_cert.not_valid_after_utc:%Y-%m-%d})"
        )
    if server_cert.public_key() != server_key.public_key():
        raise FedVaultError("the server key does not match the server certificate")


def check_server_certificates(
    directory: str | os.PathLike[str], passphrase: bytes | None = None
) -> CertificatePaths:
    """Validate the files a server needs (ca.crt, server.crt, server.key) in `directory`.

    The private keys there must be the owner's alone: whoever reads `server.key` can pose as
    the server, whoever reads `ca.key` can mint a certificate for any name. `ca.key` is not
    needed to serve (it belongs offline), but if it is still here its mode is checked too.
    """
    paths = CertificatePaths(Path(directory))
    if not paths.directory.is_dir():
        raise FedVaultError(f"certificate directory not found: {paths.directory}")
    ca = load_certificate(paths.ca_cert, "CA certificate")
    cert = load_certificate(paths.server_cert, "server certificate")
    key = load_private_key(paths.server_key, "server key", passphrase)
    verify_server_certificate(ca, cert, key)
    if paths.ca_key.exists():
        check_private_file(paths.ca_key, "CA key")
    return paths


def certificate_ips(cert: x509.Certificate) -> list[str]:
    """The IP addresses among a certificate's SANs, as strings."""
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def certificate_dns_names(cert: x509.Certificate) -> list[str]:
    """The DNS names among a certificate's SANs."""
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(sans.get_values_for_type(x509.DNSName))


def openssh_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """A public key as one OpenSSH line (`ecdsa-sha2-nistp384 AAAA...`)."""
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """The key's SHA256 fingerprint as `ssh-keygen -l` prints it (`SHA256:...`)."""
    blob = base64.b64decode(openssh_public_key(key).split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def load_node_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    """Read a site's OpenSSH public key; it must be EC P-384."""
    data = read_file(Path(path), "public key")
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm):
        raise FedVaultError(f"public key {path} is not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, CURVE):
        raise FedVaultError(f"public key {path} is not an EC P-384 (ecdsa-sha2-nistp384) key")
    return key


def load_node_private_key(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """Read a site's node-authentication private key (EC P-384; encrypted PKCS#8 or
    unencrypted OpenSSH, as `new_node_key_pair` writes it)."""
    key = keystore.load_private_key(path, "node key", passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, CURVE):
        raise FedVaultError(f"node key {path} is not an EC P-384 key")
    return key


def new_node_key_pair(
    out: str | os.PathLike[str], force: bool = False, passphrase: bytes | None = None
) -> NodeKeyPair:
    """Create a site's key pair: `out` (private, 0600) and `out`.pub (OpenSSH).

    The private key is encrypted under `passphrase` (PKCS#8), or, without one, unencrypted
    OpenSSH, which Flower's SuperNode reads as it is (a simulated site, a Kubernetes Secret).
    """
    private_path = Path(out)
    public_path = private_path.with_name(private_path.name + ".pub")
    if private_path.is_dir():
        raise FedVaultError(f"{private_path} is a directory; give a file path for the key")
    if not force and (private_path.exists() or public_path.exists()):
        raise FedVaultError(f"{private_path} already exists; pass --force to replace it")
    key = ec.generate_private_key(CURVE())
    private = private_key_bytes(key, passphrase, serialization.PrivateFormat.OpenSSH)
    public = openssh_public_key(key.public_key()) + b" fedvault-node\n"
    _write_all([(private_path, private, 0o600), (public_path, public, 0o644)])
    return NodeKeyPair(private_path, public_path, fingerprint(key.public_key()))


def format_address(host: str, port: int) -> str:
    """`host:port`, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(address: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:PORT`); a FedVaultError when malformed."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FedVaultError(f"not a HOST:PORT address: {address!r}")
    return host, int(port)


def verify_tls_server(address: str, ca_cert: str | os.PathLike[str], timeout: float = 5.0) -> bool:
    """TLS handshake with `address`, its certificate checked against `ca_cert` and the name.

    True when verified; False when nothing answers (the caller may retry later); a
    FedVaultError when the server presents a certificate the CA does not vouch for, or one
    that does not name the host in `address`, or when `ca_cert` holds no certificate.
    """
    host, port = parse_address(address)
    try:
        context = ssl.create_default_context(cafile=os.fspath(ca_cert))
    except FileNotFoundError:
        raise FedVaultError(f"CA certificate not found: {ca_cert}") from None
    except (ssl.SSLError, OSError):
        raise FedVaultError(f"CA certificate {ca_cert} is not a PEM certificate") from None
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except ssl.SSLCertVerificationError as exc:
        raise FedVaultError(
            f"the server at {address} failed certificate verification against {ca_cert}: "
            f"{exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise FedVaultError(f"TLS with {address} failed: {exc.reason}") from None
    except OSError:
        return False
