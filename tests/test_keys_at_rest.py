"""Keys at rest: every secret a site or the coordinator keeps, encrypted under its passphrase.

Each kind of secret (node key, server key, CA key, report signing key, pseudonym key, split
key) is created the way FedVault creates it and opened the way FedVault opens it; the
attacker is whoever holds the file without the passphrase, or with a wrong one, or damages
it. A refused file is never rewritten. The deployment commands say so in one line and exit 2.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cli.keys import warn_unencrypted
from cli.main import main
from cli.processes import KEY_DIR_PREFIX, Supervisor
from client.data import split_key
from client.site import Site
from privacy.anonymization.pseudonymize import load_or_create_key
from privacy.certs import (
    init_certificates,
    load_node_private_key,
    load_node_public_key,
    load_private_key,
    new_node_key_pair,
)
from privacy.errors import FedVaultError
from privacy.identity import write_roster
from privacy.keystore import (
    PASSPHRASE_ENV,
    PASSPHRASE_FILE_ENV,
    encrypt_file,
    find_passphrase,
    is_encrypted,
    load_or_create_secret,
    load_secret,
    passphrase_env,
)
from privacy.report.signing import load_or_create_signing_key, raw_public_key

RIGHT, WRONG = "right passphrase", "wrong passphrase"
Opener = Callable[[], bytes]


def _public(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def node_key(tmp_path: Path) -> tuple[Path, Opener]:
    """As `fedvault keys new` writes it; as `fedvault client` and the ClientApp read it."""
    pair = new_node_key_pair(tmp_path / "node.key", passphrase=RIGHT.encode())
    return pair.private_key, lambda: _public(load_node_private_key(pair.private_key))


def server_key(tmp_path: Path) -> tuple[Path, Opener]:
    paths = init_certificates(tmp_path / "certs", "localhost", passphrase=RIGHT.encode())
    return paths.server_key, lambda: _public(load_private_key(paths.server_key, "server key"))


def ca_key(tmp_path: Path) -> tuple[Path, Opener]:
    paths = init_certificates(tmp_path / "certs", "localhost", passphrase=RIGHT.encode())
    return paths.ca_key, lambda: _public(load_private_key(paths.ca_key, "CA key"))


def signing_key(tmp_path: Path) -> tuple[Path, Opener]:
    """Created by the ServerApp (or `fedvault server`) under the environment's passphrase."""
    path = tmp_path / "server" / "signing.key"
    load_or_create_signing_key(path)
    return path, lambda: raw_public_key(load_or_create_signing_key(path).public_key())


def pseudonym_key(tmp_path: Path) -> tuple[Path, Opener]:
    """Created by the site's ClientApp on first use, under the environment's passphrase."""
    load_or_create_key(tmp_path)
    return tmp_path / "pseudonym.key", lambda: load_or_create_key(tmp_path)


def site_split_key(tmp_path: Path) -> tuple[Path, Opener]:
    site = Site("site", tmp_path)
    split_key(site)
    return tmp_path / "split.key", lambda: split_key(site)


KINDS = {
    "node key": node_key,
    "server key": server_key,
    "CA key": ca_key,
    "signing key": signing_key,
    "pseudonym key": pseudonym_key,
    "split key": site_split_key,
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def passphrase(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str | None], None]:
    """Set (or, with None, unset) the passphrase where apps and commands find it.

    The test gets its own FEDVAULT_HOME: a signing key other tests left there (unencrypted,
    as simulations make it) would change what a server says at start.
    """
    monkeypatch.delenv(PASSPHRASE_FILE_ENV, raising=False)
    monkeypatch.setenv("FEDVAULT_HOME", str(tmp_path / "fedvault-home"))

    def use(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
        else:
            monkeypatch.setenv(PASSPHRASE_ENV, value)

    use(RIGHT)
    return use


def one_line_error(call: Opener) -> str:
    with pytest.raises(FedVaultError) as refused:
        call()
    message = str(refused.value)
    assert "\n" not in message
    return message


def cli(*args: str) -> tuple[int, str]:
    """`fedvault ARGS` in this process: (status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


@pytest.mark.parametrize("kind", KINDS)
def test_each_secret_is_encrypted_0600_and_opens_only_under_its_passphrase(
    kind, tmp_path, passphrase
):
    path, open_secret = KINDS[kind](tmp_path)
    assert mode(path) == 0o600 and is_encrypted(path)
    assert open_secret() == open_secret()
    before = path.read_bytes()
    passphrase(WRONG)
    message = one_line_error(open_secret)
    assert message.startswith(f"cannot decrypt {kind} {path}: wrong passphrase")
    passphrase(None)
    message = one_line_error(open_secret)
    assert message.startswith(f"{kind} {path} is encrypted: give its passphrase with")
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_secret_is_named_and_left_as_it_is(kind, tmp_path, passphrase):
    path, open_secret = KINDS[kind](tmp_path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    damaged = path.read_bytes()
    assert str(path) in one_line_error(open_secret)
    assert path.read_bytes() == damaged


@pytest.mark.parametrize("kind", KINDS)
def test_a_secret_others_can_read_is_refused(kind, tmp_path, passphrase):
    path, open_secret = KINDS[kind](tmp_path)
    path.chmod(0o640)
    message = one_line_error(open_secret)
    assert str(path) in message and "(mode 0640); run chmod 600 on it" in message


def test_unencrypted_keys_from_before_still_load_and_new_secrets_follow_the_passphrase(
    tmp_path, passphrase
):
    passphrase(None)
    legacy = new_node_key_pair(tmp_path / "node.key")  # OpenSSH, as Flower reads it
    pseudonym = load_or_create_key(tmp_path / "site")
    signing = load_or_create_signing_key(tmp_path / "signing.key")
    assert (tmp_path / "site" / "pseudonym.key").read_bytes() == pseudonym
    assert not any(is_encrypted(p) for p in (legacy.private_key, tmp_path / "signing.key"))
    passphrase(RIGHT)  # a passphrase set later does not lock out the keys from before
    assert load_node_private_key(legacy.private_key).public_key() is not None
    assert load_or_create_key(tmp_path / "site") == pseudonym
    assert load_or_create_signing_key(tmp_path / "signing.key").public_key() == (
        signing.public_key()
    )
    assert not (tmp_path / "site" / "split.key").exists()
    split_key(Site("site", tmp_path / "site"))
    assert is_encrypted(tmp_path / "site" / "split.key")


def test_the_deployment_commands_warn_once_per_unencrypted_key(tmp_path, passphrase, capsys):
    plain = new_node_key_pair(tmp_path / "plain.key").private_key
    encrypted = new_node_key_pair(tmp_path / "enc.key", passphrase=RIGHT.encode()).private_key
    warn_unencrypted([(plain, "node key"), (encrypted, "node key"), (tmp_path / "no", "x")], b"p")
    assert capsys.readouterr().err == (
        f"fedvault: warning: node key {plain} is stored unencrypted; encrypt it with "
        f"`fedvault keys encrypt {plain}`\n"
    )
    warn_unencrypted([], None)
    assert capsys.readouterr().err.startswith("fedvault: warning: no passphrase (")


def test_a_server_from_before_encryption_starts_with_its_plain_keys_and_says_so(
    tmp_path, passphrase
):
    passphrase(None)
    certs = init_certificates(tmp_path / "certs", "localhost")  # server.key plain
    certs.ca_key.unlink()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = cli(
            "server", "--certs", str(certs.directory), "--state-dir", str(tmp_path / "s"),
            "--no-proxy", "--control-port", str(port),
        )  # fmt: skip
    lines = err.splitlines()
    assert code == 2 and len(lines) == 3, err
    assert lines[0].startswith("fedvault: warning: no passphrase")
    assert lines[1].startswith(f"fedvault: warning: server key {certs.server_key} is stored")
    assert lines[2].startswith(f"fedvault: error: cannot listen on 127.0.0.1:{port}")


def test_the_raw_secret_file_is_the_documented_format(tmp_path):
    path = tmp_path / "split.key"
    secret = load_or_create_secret(path, "split key", RIGHT.encode())
    fields = tomllib.loads(path.read_text())
    assert set(fields) == {
        "format", "version", "kdf", "n", "r", "p", "salt", "check", "cipher", "nonce",
        "ciphertext",
    }  # fmt: skip
    assert (fields["format"], fields["version"], fields["kdf"], fields["cipher"]) == (
        "fedvault-secret",
        1,
        "scrypt",
        "aes-256-gcm",
    )
    raw = {name: base64.b64decode(fields[name]) for name in ("salt", "check", "nonce")}
    derived = Scrypt(salt=raw["salt"], length=48, n=fields["n"], r=fields["r"], p=fields["p"])
    derived = derived.derive(RIGHT.encode())
    assert derived[32:] == raw["check"]
    header = {k: v for k, v in fields.items() if k != "ciphertext"}
    aad = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    plain = AESGCM(derived[:32]).decrypt(raw["nonce"], base64.b64decode(fields["ciphertext"]), aad)
    assert plain == secret and len(secret) == 32


def _rewrite(path: Path, field: str, value: object) -> None:
    """Replace (or, with None, drop) one field of a secret file, keeping the rest."""
    kept = []
    for line in path.read_text().splitlines():
        if line.startswith(f"{field} = "):
            if value is None:
                continue
            line = f"{field} = {json.dumps(value)}"
        kept.append(line)
    path.write_text("\n".join(kept) + "\n")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ciphertext", base64.b64encode(bytes(48)).decode(), "is damaged: it fails authentication"),
        ("nonce", base64.b64encode(bytes(12)).decode(), "is damaged: it fails authentication"),
        ("check", base64.b64encode(bytes(16)).decode(), "wrong passphrase"),
        ("version", 2, "is a FedVault secret of version 2; this FedVault reads version 1"),
        ("cipher", "aes-128-cbc", "is damaged: unknown kdf or cipher"),
        ("n", 2**30, "is damaged: scrypt parameters ask for more than 1 GiB"),
        ("n", 1000, "is damaged: scrypt parameters are not positive integers"),
        ("salt", "not base64!", "is damaged:"),
        ("salt", None, "is damaged: field 'salt' is missing"),
        ("format", "something-else", "is not a 32-byte key or a FedVault encrypted secret"),
    ],
)
def test_a_tampered_secret_file_is_refused_naming_the_problem(tmp_path, field, value, message):
    path = tmp_path / "pseudonym.key"
    load_or_create_secret(path, "pseudonym key", RIGHT.encode())
    _rewrite(path, field, value)
    tampered = path.read_bytes()
    refused = one_line_error(lambda: load_secret(path, "pseudonym key", RIGHT.encode()))
    assert message in refused and str(path) in refused
    assert path.read_bytes() == tampered


def test_the_passphrase_comes_from_the_flag_then_the_file_variable_then_the_value(
    tmp_path, monkeypatch
):
    flag, named = tmp_path / "flag", tmp_path / "named"
    for path, text in ((flag, "from the flag\n"), (named, "from the file\r\nsecond line")):
        path.write_text(text)
        path.chmod(0o600)
    monkeypatch.setenv(PASSPHRASE_ENV, "from the variable")
    monkeypatch.setenv(PASSPHRASE_FILE_ENV, str(named))
    assert find_passphrase(flag) == b"from the flag"
    assert find_passphrase() == b"from the file"
    monkeypatch.setenv(PASSPHRASE_FILE_ENV, "")
    assert find_passphrase() == b"from the variable"
    monkeypatch.setenv(PASSPHRASE_ENV, "")
    assert find_passphrase() is None
    assert passphrase_env(None) == {}  # a child inherits FEDVAULT_PASSPHRASE as it is
    monkeypatch.chdir(tmp_path)  # Flower's processes may run elsewhere: paths go absolute
    assert passphrase_env("flag") == {PASSPHRASE_FILE_ENV: str(flag)}
    monkeypatch.setenv(PASSPHRASE_FILE_ENV, "named")
    assert passphrase_env(None) == {PASSPHRASE_FILE_ENV: str(named)}


def test_a_bad_passphrase_file_is_one_line(tmp_path):
    path = tmp_path / "passphrase"
    assert one_line_error(lambda: find_passphrase(path)) == f"passphrase file not found: {path}"
    path.write_text("\n")
    path.chmod(0o600)
    assert one_line_error(lambda: find_passphrase(path)) == f"passphrase file {path} is empty"
    path.write_text("secret")
    path.chmod(0o644)
    assert "passphrase file" in one_line_error(lambda: find_passphrase(path))


@pytest.fixture()
def site(tmp_path: Path, passphrase) -> dict[str, Path]:
    """An encrypted node key, a CA certificate, and a site state directory (not created)."""
    certs = init_certificates(tmp_path / "certs", "localhost", passphrase=RIGHT.encode())
    pair = new_node_key_pair(tmp_path / "node.key", passphrase=RIGHT.encode())
    write_roster(tmp_path / "roster.toml", {"site": load_node_public_key(pair.public_key)})
    return {
        "certs": certs.directory,
        "ca": certs.ca_cert,
        "key": pair.private_key,
        "roster": tmp_path / "roster.toml",
        "state": tmp_path / "s",
    }


def client_args(site: dict[str, Path]) -> list[str]:
    return [
        "client", "--state-dir", str(site["state"]), "--server", "127.0.0.1:1",
        "--ca", str(site["ca"]), "--key", str(site["key"]), "--roster", str(site["roster"]),
    ]  # fmt: skip


def test_a_wrong_passphrase_stops_the_client_in_one_line_and_writes_nothing(site, passphrase):
    before = site["key"].read_bytes()
    passphrase(WRONG)
    assert cli(*client_args(site)) == (
        2,
        f"fedvault: error: cannot decrypt node key {site['key']}: wrong passphrase, or the "
        "file is damaged\n",
    )
    assert site["key"].read_bytes() == before and not site["state"].exists()


def test_a_wrong_passphrase_from_the_flag_wins_over_a_right_environment(site, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text(WRONG)
    wrong.chmod(0o600)
    code, err = cli(*client_args(site), "--passphrase-file", str(wrong))
    assert code == 2 and err.startswith(f"fedvault: error: cannot decrypt node key {site['key']}")


def test_a_site_secret_under_another_passphrase_stops_the_client_before_it_starts(site):
    split = site["state"] / "split.key"
    load_or_create_secret(split, "split key", WRONG.encode())
    before = split.read_bytes()
    assert cli(*client_args(site)) == (
        2,
        f"fedvault: error: cannot decrypt split key {split}: wrong passphrase\n",
    )
    assert split.read_bytes() == before
    assert sorted(p.name for p in site["state"].iterdir()) == ["split.key"]


def test_a_wrong_passphrase_stops_the_server_in_one_line_and_writes_nothing(site, passphrase):
    files = {p: p.read_bytes() for p in site["certs"].iterdir()}
    passphrase(WRONG)
    state = site["state"]
    code, err = cli("server", "--certs", str(site["certs"]), "--state-dir", str(state))
    server_key = site["certs"] / "server.key"
    assert (code, err) == (
        2,
        f"fedvault: error: cannot decrypt server key {server_key}: wrong passphrase, or the "
        "file is damaged\n",
    )
    assert {p: p.read_bytes() for p in site["certs"].iterdir()} == files
    assert not state.exists()


def test_a_signing_key_under_another_passphrase_stops_the_server_before_any_run(site, monkeypatch):
    home = site["state"].parent / "home"
    monkeypatch.setenv("FEDVAULT_HOME", str(home))
    key = home / "server" / "signing.key"
    load_or_create_signing_key(key, WRONG.encode())
    before = key.read_bytes()
    code, err = cli(
        "server", "--certs", str(site["certs"]), "--state-dir", str(site["state"]), "--no-proxy"
    )
    assert (code, err) == (
        2,
        f"fedvault: error: cannot decrypt signing key {key}: wrong passphrase, or the file is "
        "damaged\n",
    )
    assert key.read_bytes() == before


def test_keys_encrypt_brings_old_keys_under_the_passphrase_without_changing_them(
    tmp_path, passphrase, capsys
):
    passphrase(None)
    node = new_node_key_pair(tmp_path / "node.key").private_key
    pseudonym = load_or_create_key(tmp_path)
    public = _public(load_node_private_key(node))
    assert cli("keys", "encrypt", str(node))[1].startswith("fedvault: error: no passphrase")
    passphrase(RIGHT)
    pseudonym_file = tmp_path / "pseudonym.key"
    assert main(["keys", "encrypt", str(node), str(pseudonym_file)]) == 0
    assert capsys.readouterr().out == f"encrypted: {node}\nencrypted: {pseudonym_file}\n"
    assert is_encrypted(node) and is_encrypted(pseudonym_file)
    assert mode(node) == 0o600 and mode(pseudonym_file) == 0o600
    assert _public(load_node_private_key(node)) == public
    assert load_or_create_key(tmp_path) == pseudonym  # the same pseudonyms as before
    before = node.read_bytes()
    assert main(["keys", "encrypt", str(node)]) == 0
    assert capsys.readouterr().out == f"already encrypted: {node}\n"
    assert node.read_bytes() == before


def test_encrypting_needs_a_key(tmp_path):
    junk = tmp_path / "junk"
    junk.write_text("not a key")
    junk.chmod(0o600)
    message = one_line_error(lambda: encrypt_file(junk, "key", RIGHT.encode()))
    assert message == f"cannot read key {junk}: not a private key in PEM or OpenSSH format"
    assert junk.read_text() == "not a key"


@pytest.fixture()
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private XDG_RUNTIME_DIR, where decrypted copies for Flower's processes go."""
    directory = tmp_path / "runtime"
    directory.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(directory))
    return directory


def test_a_child_reads_an_unencrypted_key_where_it_is(tmp_path, runtime):
    plain = new_node_key_pair(tmp_path / "node.key").private_key
    with Supervisor() as supervisor:
        assert (
            supervisor.key_file(
                plain, "node key", None, serialization.PrivateFormat.OpenSSH, tmp_path
            )
            == plain
        )
    assert list(runtime.iterdir()) == [] and plain.exists()


def test_a_decrypted_copy_is_private_in_memory_and_gone_once_read(tmp_path, runtime):
    key = new_node_key_pair(tmp_path / "node.key", passphrase=RIGHT.encode()).private_key
    with Supervisor() as supervisor:
        copy = supervisor.key_file(
            key, "node key", RIGHT.encode(), serialization.PrivateFormat.OpenSSH, tmp_path
        )
        assert copy.parent.parent == runtime and copy.parent.name.startswith(KEY_DIR_PREFIX)
        assert mode(copy.parent) == 0o700 and mode(copy) == 0o600
        flower_reads = serialization.load_ssh_private_key(copy.read_bytes(), None)
        assert _public(flower_reads) == _public(load_node_private_key(key, RIGHT.encode()))
        supervisor.remove_key_files()
        assert list(runtime.iterdir()) == []
    assert is_encrypted(key)


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])  # a bug, Ctrl-C / SIGTERM
def test_a_decrypted_copy_never_outlives_its_supervisor(tmp_path, runtime, stop):
    paths = init_certificates(tmp_path / "certs", "localhost", passphrase=RIGHT.encode())
    with pytest.raises(stop), Supervisor() as supervisor:
        copy = supervisor.key_file(
            paths.server_key,
            "server key",
            RIGHT.encode(),
            serialization.PrivateFormat.PKCS8,
            tmp_path,
        )
        assert copy.exists()
        raise stop
    assert list(runtime.iterdir()) == []


def test_without_a_memory_file_system_the_copy_goes_under_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("cli.processes.MEMORY_DIRS", ())
    key = new_node_key_pair(tmp_path / "node.key", passphrase=RIGHT.encode()).private_key
    state = tmp_path / "state"
    with Supervisor() as supervisor:
        copy = supervisor.key_file(
            key, "node key", RIGHT.encode(), serialization.PrivateFormat.OpenSSH, state
        )
        assert copy.parent.parent == state and mode(copy.parent) == 0o700
    assert list(state.iterdir()) == []
