"""`fedvault server` (the SuperLink behind a Fleet-only proxy), `register` and `unregister`.

`server` runs in the foreground like a service: it streams the logs of what it started,
and on Ctrl-C or SIGTERM stops all of it (see cli/processes.py). Its keys stay encrypted on
disk: the SuperLink and nginx read a decrypted copy of server.key that is removed once both
are ready, and the ServerApp, which signs each run's report, finds the passphrase in the
environment it inherits from the SuperLink.
"""

from __future__ import annotations

import argparse
import json
import sys

from cryptography.hazmat.primitives.serialization import PrivateFormat

from cli.keys import add_passphrase_flag, warn_unencrypted
from cli.processes import Supervisor, accepting, check_port_free, executable, flower_env
from privacy.certs import LOOPBACK_IPS
from privacy.keystore import PASSPHRASE_VARIABLES, find_passphrase, passphrase_env
from server.longpoll import FLEET, FLEET_SOCKETS_ENV
from server.superlink import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_PORT,
    LOOPBACK,
    longpoll_command,
    nginx_command,
    prepare_server,
    proxy_ready,
    register_site,
    reregister_sites,
    superlink_command,
    superlink_ready,
    transport_record,
    unregister_site,
    write_server_record,
)
from server.transport import TRANSPORT_ENV

READY_TIMEOUT_S = 90.0


def _server(args: argparse.Namespace) -> int:
    from privacy.report.signing import default_signing_key, load_or_create_signing_key

    passphrase = find_passphrase(args.passphrase_file)
    settings = prepare_server(
        args.certs,
        args.state_dir,
        args.host,
        args.port,
        args.control_port,
        not args.no_proxy,
        passphrase,
    )
    signing_key = default_signing_key()
    if signing_key.exists():  # a wrong passphrase fails here, not when a run ends
        load_or_create_signing_key(signing_key, passphrase)
    certs = settings.certs
    warn_unencrypted(
        [(certs.server_key, "server key"), (certs.ca_key, "CA key"), (signing_key, "signing key")],
        passphrase,
    )
    check_port_free(LOOPBACK, settings.control_port)
    if settings.proxy:
        check_port_free(settings.host, settings.port)
    env = flower_env(settings.state_dir / "flwr")
    proxy_env = {name: value for name, value in env.items() if name not in PASSPHRASE_VARIABLES}
    env[TRANSPORT_ENV] = json.dumps(transport_record(settings))
    env.update(passphrase_env(args.passphrase_file))
    with Supervisor() as supervisor:
        sockets = supervisor.socket_dir()
        if settings.proxy:  # the ServerApp announces mail and hears replies there
            env[FLEET_SOCKETS_ENV] = str(sockets)
        key_file = supervisor.key_file(
            certs.server_key, "server key", passphrase, PrivateFormat.PKCS8, settings.state_dir
        )
        superlink = supervisor.start(
            "superlink", superlink_command(settings, executable("flower-superlink"), key_file), env
        )
        supervisor.wait_until(
            superlink, lambda: superlink_ready(settings), args.ready_timeout, "readiness"
        )
        sites = reregister_sites(settings, executable("flwr"), flower_env())
        if sites:
            print(f"fedvault: sites registered: {', '.join(sites)}", flush=True)
        if settings.proxy:
            longpoll = supervisor.start("long-poll", longpoll_command(settings, sockets), proxy_env)
            supervisor.wait_until(
                longpoll, lambda: accepting(sockets / FLEET), args.ready_timeout, "its socket"
            )
            proxy = supervisor.start("proxy", nginx_command(settings, key_file, sockets), proxy_env)
            supervisor.wait_until(
                proxy, lambda: proxy_ready(settings), args.ready_timeout, "proxied Fleet API"
            )
        # Flower reads --ssl-keyfile at start-up only (its argument parser and uvicorn's TLS
        # set-up, both before it answers); nginx reads its key when it starts.
        supervisor.remove_key_files()
        record = write_server_record(settings)
        print(
            f"fedvault: server ready, listening for sites on {settings.fleet_address}; "
            f"runs and registrations use {settings.control_address} on this machine "
            f"(recorded in {record}). Stop with Ctrl-C.",
            flush=True,
        )
        exited = supervisor.wait_for_exit_or_signal()
        if exited is not None:
            print(
                f"fedvault: error: {exited.name} exited with status {exited.exited()}; "
                "stopping the server",
                file=sys.stderr,
            )
            return 1
    print("fedvault: server stopped", flush=True)
    return 0


def _register(args: argparse.Namespace) -> int:
    site = register_site(
        args.public_key,
        args.name,
        args.state_dir,
        executable("flwr"),
        flower_env(),
        server=args.server,
        ca=args.ca,
    )
    print(f"registered site {site.name!r}: node {site.node_id}, key {site.fingerprint}")
    return 0


def _unregister(args: argparse.Namespace) -> int:
    site = unregister_site(
        args.name, args.state_dir, executable("flwr"), flower_env(), server=args.server, ca=args.ca
    )
    print(f"unregistered site {site.name!r}: key {site.fingerprint} can no longer connect")
    return 0


def _control_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        required=True,
        metavar="DIR",
        help="the server's --state-dir (holds the control address and the site registry)",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="Control API address, if not the one recorded in STATE_DIR/server.toml",
    )
    parser.add_argument("--ca", metavar="CA_CERT", help="CA certificate, if not the recorded one")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault server` and `fedvault register`."""
    server = subparsers.add_parser(
        "server",
        help="run the coordinator: Flower SuperLink behind a Fleet-only TLS proxy",
        description="Start flower-superlink with TLS, SuperNode authentication, in-memory "
        "state and no runtime dependency installation, bound to 127.0.0.1:CONTROL_PORT "
        "only. Every site in STATE_DIR/sites.toml is registered again at each start. Sites "
        "connect to HOST:PORT, served by nginx, which forwards nothing but the Fleet API: "
        "run submission and node registration are "
        "possible only from this machine. Streams the logs; Ctrl-C or SIGTERM stops "
        "everything it started.",
    )
    server.add_argument(
        "--certs",
        required=True,
        metavar="DIR",
        help="directory from `fedvault certs init` (ca.crt, server.crt, server.key)",
    )
    server.add_argument(
        "--state-dir",
        required=True,
        metavar="DIR",
        help="the server's state: database, registered sites, proxy config (created 0700)",
    )
    server.add_argument(
        "--host",
        default=LOOPBACK_IPS[0],
        help="address sites connect to (default: %(default)s; 0.0.0.0 for all interfaces)",
    )
    server.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port sites connect to (%(default)s)"
    )
    server.add_argument(
        "--control-port",
        type=_port,
        default=DEFAULT_CONTROL_PORT,
        help="loopback-only port of the SuperLink itself: Control API for runs and "
        "registrations (default: %(default)s)",
    )
    add_passphrase_flag(
        server, "decrypts server.key and the report signing key, and encrypts a new one"
    )
    server.add_argument(
        "--no-proxy",
        action="store_true",
        help="run without nginx: only 127.0.0.1:CONTROL_PORT is served, so sites must run on "
        "this machine (trials on one host)",
    )
    server.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT_S,
        metavar="SECONDS",
        help="give up if not ready within this time (default: %(default)s)",
    )
    server.set_defaults(func=_server)

    reg = subparsers.add_parser(
        "register",
        help="allow a site's key to connect to the server",
        description="Register a site's node-authentication public key (from `fedvault keys "
        "new`) with the running server, and record the site's name and key fingerprint in "
        "STATE_DIR/sites.toml. Run it on the server machine: registration uses the "
        "loopback-only Control API. Check the fingerprint with the site out of band.",
    )
    reg.add_argument("public_key", metavar="KEY.pub", help="the site's OpenSSH public key")
    reg.add_argument("--name", required=True, help="the site's name (letters, digits, . _ -)")
    _control_flags(reg)
    reg.set_defaults(func=_register)

    unreg = subparsers.add_parser(
        "unregister",
        help="revoke a registered site's key",
        description="Unregister a site (by the name given to `fedvault register`): the "
        "server refuses its key from now on, e.g. after the key was lost or the site left.",
    )
    unreg.add_argument("name", metavar="SITE", help="the site's registered name")
    _control_flags(unreg)
    unreg.set_defaults(func=_unregister)
