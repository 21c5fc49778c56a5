"""Certificates and node keys: what `fedvault certs init` and `fedvault keys new` produce.

Both encrypt private keys under the passphrase by default (privacy/keystore.py); the CLI
tests find it where the deployment commands do, in FEDVAULT_PASSPHRASE.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cli.main import main
from privacy.certs import (
    certificate_dns_names,
    certificate_ips,
    check_server_certificates,
    init_certificates,
    load_certificate,
    load_node_public_key,
    new_node_key_pair,
    parse_address,
    verify_tls_server,
)
from privacy.errors import FedVaultError
from privacy.keystore import PASSPHRASE_ENV, is_encrypted

PASSPHRASE = b"correct horse battery staple"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def passphrase(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The passphrase, set where `fedvault` commands read it."""
    monkeypatch.setenv(PASSPHRASE_ENV, PASSPHRASE.decode())
    return PASSPHRASE


@pytest.fixture()
def certs(tmp_path: Path) -> Path:
    out = tmp_path / "certs"
    init_certificates(out, "fl.example.org", ["10.0.0.5", "2001:db8::7"], passphrase=PASSPHRASE)
    return out


def test_cli_init_writes_a_ca_and_a_server_certificate_it_signed(tmp_path, capsys, passphrase):
    out = tmp_path / "pki"
    code, stdout, _ = cli(
        ["certs", "init", "--out", str(out), "--server-name", "fl.example.org", "--ip", "10.0.0.5"],
        capsys,
    )
    assert code == 0
    assert "ca.crt" in stdout
    ca = load_certificate(out / "ca.crt")
    server = load_certificate(out / "server.crt")
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert server.public_key().curve.name == "secp384r1"
    check_server_certificates(out)
    for key in ("ca.key", "server.key"):
        assert (out / key).read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        serialization.load_pem_private_key((out / key).read_bytes(), passphrase)


def test_cli_init_without_a_passphrase_is_refused_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "pki"
    code, _, err = cli(["certs", "init", "--out", str(out), "--server-name", "a.org"], capsys)
    assert (code, err) == (
        2,
        "fedvault: error: no passphrase to encrypt the CA key (it is never stored plain): give "
        "one with --passphrase-file, FEDVAULT_PASSPHRASE_FILE or FEDVAULT_PASSPHRASE\n",
    )
    assert not out.exists()


def test_a_throwaway_ca_has_its_key_sealed_never_plain(tmp_path):
    paths = init_certificates(tmp_path / "c", "fl.example.org")
    assert is_encrypted(paths.ca_key) and not is_encrypted(paths.server_key)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(paths.ca_key.read_bytes(), PASSPHRASE)


def test_sans_always_include_loopback_and_every_given_name(certs):
    server = load_certificate(certs / "server.crt")
    assert set(certificate_dns_names(server)) == {"fl.example.org", "localhost"}
    assert {ipaddress.ip_address(ip) for ip in certificate_ips(server)} == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("2001:db8::7"),
    }


def test_server_name_may_be_an_ip_address(tmp_path):
    init_certificates(tmp_path / "c", "192.0.2.10")
    server = load_certificate(tmp_path / "c" / "server.crt")
    assert set(certificate_ips(server)) == {"192.0.2.10", "127.0.0.1"}
    assert certificate_dns_names(server) == ["localhost"]


def test_private_keys_are_0600_certificates_world_readable(certs):
    assert mode(certs / "ca.key") == 0o600
    assert mode(certs / "server.key") == 0o600
    assert mode(certs / "ca.crt") == 0o644
    assert mode(certs / "server.crt") == 0o644
    assert mode(certs) == 0o700
    assert not list(certs.glob(".*tmp"))


def _tls_server(certs: Path) -> tuple[socket.socket, threading.Thread]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.crt", certs / "server.key", password=PASSPHRASE)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def serve() -> None:
        for _ in range(6):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_python_tls_accepts_the_certificate_for_its_names_only(certs):
    listener, _ = _tls_server(certs)
    port = listener.getsockname()[1]
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    try:
        for name in ("127.0.0.1", "localhost", "fl.example.org", "10.0.0.5"):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=name) as tls,
            ):
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        with (
            pytest.raises(ssl.SSLCertVerificationError),
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="impostor.example.org"),
        ):
            pass
        assert verify_tls_server(f"127.0.0.1:{port}", certs / "ca.crt")
    finally:
        listener.close()


def test_verify_tls_server_rejects_a_foreign_ca_and_reports_nothing_listening(certs, tmp_path):
    other = init_certificates(tmp_path / "other", "fl.example.org")
    listener, _ = _tls_server(certs)
    port = listener.getsockname()[1]
    try:
        with pytest.raises(FedVaultError, match="failed certificate verification"):
            verify_tls_server(f"127.0.0.1:{port}", other.ca_cert)
    finally:
        listener.close()
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nothing = unused.getsockname()[1]
    assert verify_tls_server(f"127.0.0.1:{nothing}", certs / "ca.crt", timeout=2) is False


def test_refuses_to_overwrite_an_existing_ca_unless_forced(certs, capsys, passphrase):
    before = {p.name: p.read_bytes() for p in certs.iterdir()}
    code, _, err = cli(
        ["certs", "init", "--out", str(certs), "--server-name", "fl.example.org"], capsys
    )
    assert code == 2
    assert err.startswith("fedvault: error: a CA already exists") and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in certs.iterdir()} == before
    code, _, _ = cli(
        ["certs", "init", "--out", str(certs), "--server-name", "fl.example.org", "--force"],
        capsys,
    )
    assert code == 0
    assert (certs / "ca.key").read_bytes() != before["ca.key"]
    check_server_certificates(certs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--server-name", "fl.example.org", "--ip", "10.0.0.300"], "not an IP address"),
        (["--server-name", "bad name!"], "not a valid host name"),
        (["--server-name=-leading.example.org"], "not a valid host name"),
    ],
)
def test_bad_names_are_one_line_errors_and_write_nothing(
    tmp_path, capsys, passphrase, args, message
):
    out = tmp_path / "pki"
    code, _, err = cli(["certs", "init", "--out", str(out), *args], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_out_must_be_a_directory_and_arguments_are_required(tmp_path, capsys, passphrase):
    target = tmp_path / "file"
    target.write_text("x")
    code, _, err = cli(["certs", "init", "--out", str(target), "--server-name", "a.org"], capsys)
    assert code == 2 and "not a directory" in err
    with pytest.raises(SystemExit) as exc:
        main(["certs", "init", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "--server-name" in capsys.readouterr().err


def test_server_certificate_checks_name_the_problem(certs, tmp_path):
    with pytest.raises(FedVaultError, match="certificate directory not found"):
        check_server_certificates(tmp_path / "missing")
    other = init_certificates(tmp_path / "other", "fl.example.org")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("ca.crt", "server.crt", "server.key"):
        (broken / name).write_bytes((certs / name).read_bytes())
    (broken / "server.key").unlink()
    with pytest.raises(FedVaultError, match="server key not found"):
        check_server_certificates(broken, PASSPHRASE)
    (broken / "server.key").write_text("not a key")
    (broken / "server.key").chmod(0o600)
    with pytest.raises(FedVaultError, match="not a private key in PEM or OpenSSH format"):
        check_server_certificates(broken, PASSPHRASE)
    (broken / "server.key").write_bytes(other.server_key.read_bytes())
    with pytest.raises(FedVaultError, match="does not match"):
        check_server_certificates(broken, PASSPHRASE)
    (broken / "server.key").write_bytes((certs / "server.key").read_bytes())
    with pytest.raises(FedVaultError, match=r"server key .* is encrypted: give its passphrase"):
        check_server_certificates(broken)
    (broken / "ca.crt").write_bytes(other.ca_cert.read_bytes())
    with pytest.raises(FedVaultError, match="not signed by this CA"):
        check_server_certificates(broken, PASSPHRASE)
    (broken / "ca.crt").write_text("garbage")
    with pytest.raises(FedVaultError, match="not a PEM certificate"):
        check_server_certificates(broken, PASSPHRASE)


def test_server_private_keys_must_be_the_owners_alone(certs):
    check_server_certificates(certs, PASSPHRASE)
    (certs / "server.key").chmod(0o604)
    with pytest.raises(FedVaultError, match=r"server key .* by other users \(mode 0604\)"):
        check_server_certificates(certs, PASSPHRASE)
    (certs / "server.key").chmod(0o600)
    (certs / "ca.key").chmod(0o620)
    with pytest.raises(FedVaultError, match=r"CA key .* by other users \(mode 0620\)"):
        check_server_certificates(certs, PASSPHRASE)
    (certs / "ca.key").unlink()  # moved to offline storage, as it should be
    check_server_certificates(certs, PASSPHRASE)


def test_verify_tls_server_names_a_ca_file_without_a_certificate(certs):
    with pytest.raises(FedVaultError, match=r"ca\.key is not a PEM certificate"):
        verify_tls_server("127.0.0.1:1", certs / "ca.key")


def test_keys_new_writes_an_encrypted_p384_key_and_an_openssh_public_key(
    tmp_path, capsys, passphrase
):
    key = tmp_path / "site" / "node.key"
    code, stdout, _ = cli(["keys", "new", "--out", str(key)], capsys)
    assert code == 0 and "encrypted under the passphrase" in stdout
    assert mode(key) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    private = serialization.load_pem_private_key(key.read_bytes(), passphrase)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    pub_line = (tmp_path / "site" / "node.key.pub").read_text()
    assert pub_line.startswith("ecdsa-sha2-nistp384 ")
    public = serialization.load_ssh_public_key(pub_line.encode())
    assert public == private.public_key()
    blob = base64.b64decode(pub_line.split()[1])
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert expected in stdout


def test_keys_new_unencrypted_is_openssh_as_flower_reads_it(tmp_path, capsys):
    key = tmp_path / "node.key"
    code, stdout, _ = cli(["keys", "new", "--out", str(key), "--unencrypted"], capsys)
    assert code == 0 and "(0600, unencrypted;" in stdout
    assert mode(key) == 0o600
    # what flower-supernode --auth-supernode-private-key does with the file
    private = serialization.load_ssh_private_key(key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"


def test_keys_new_without_a_passphrase_is_refused_and_writes_nothing(tmp_path, capsys):
    key = tmp_path / "node.key"
    code, _, err = cli(["keys", "new", "--out", str(key)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("fedvault: error: no passphrase to encrypt the key: give one with")
    assert list(tmp_path.iterdir()) == []


def test_keys_new_refuses_to_overwrite_and_rejects_a_directory(tmp_path, capsys, passphrase):
    pair = new_node_key_pair(tmp_path / "node.key")
    before = pair.private_key.read_bytes()
    code, _, err = cli(["keys", "new", "--out", str(pair.private_key)], capsys)
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert pair.private_key.read_bytes() == before
    assert cli(["keys", "new", "--out", str(pair.private_key), "--force"], capsys)[0] == 0
    assert pair.private_key.read_bytes() != before
    code, _, err = cli(["keys", "new", "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err


def test_only_p384_openssh_public_keys_are_accepted(tmp_path):
    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    def openssh(key) -> bytes:
        return key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )

    good = new_node_key_pair(tmp_path / "good.key")
    assert load_node_public_key(good.public_key).curve.name == "secp384r1"
    p256 = write("p256.pub", openssh(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(FedVaultError, match="P-384"):
        load_node_public_key(p256)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(FedVaultError, match="P-384"):
        load_node_public_key(write("rsa.pub", openssh(rsa_key)))
    with pytest.raises(FedVaultError, match="not an OpenSSH public key"):
        load_node_public_key(write("junk.pub", b"hello"))
    with pytest.raises(FedVaultError, match="not found"):
        load_node_public_key(tmp_path / "missing.pub")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9443", ("127.0.0.1", 9443)), ("[::1]:80", ("::1", 80)), ("a.org:1", ("a.org", 1))],
)
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":9443", "host:0", "host:70000", "host:http"])
def test_parse_address_rejects_malformed(text):
    with pytest.raises(FedVaultError, match="HOST:PORT"):
        parse_address(text)
