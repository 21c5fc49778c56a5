"""`fedvault kubernetes`: write a site's configuration for Flower's Kubernetes executor.

The configuration itself (executor config, manifests, secrets) is client/kubernetes.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from client.kubernetes import (
    DEFAULT_UID,
    EXECUTOR_FILE,
    MANIFEST_FILE,
    KubernetesSite,
    secret_commands,
    write_site,
)
from privacy.certs import check_private_file, load_node_private_key


def _run(args: argparse.Namespace) -> int:
    site = KubernetesSite(
        name=args.site,
        image=args.image,
        server=args.server,
        federation_ca=Path(args.ca).resolve(),
        site_file=Path(args.site_file).resolve(),
        namespace=args.namespace,
        state_claim=args.state_claim or "",
        data_claim=args.data_claim or "",
        cpu=args.cpu,
        memory=args.memory,
        active_pods=args.max_pods,
        uid=args.uid,
    )
    node_key = Path(args.node_key).resolve()
    load_node_private_key(node_key)
    check_private_file(node_key, "node key")
    out = Path(args.out).resolve()
    write_site(site, out)
    print(
        f"fedvault: wrote {out / EXECUTOR_FILE}, {out / MANIFEST_FILE} and the secrets beside them"
    )
    print(f"fedvault: the state volume claim {site.claim} must exist in namespace {site.namespace}")
    print("fedvault: load the secrets, then apply the manifests:")
    for line in [
        *secret_commands(site, out, node_key),
        f"kubectl apply -f {out / MANIFEST_FILE}",
    ]:
        print(f"  {line}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fedvault kubernetes`."""
    parser = subparsers.add_parser(
        "kubernetes",
        help="write a site's configuration for running its ClientApps as Kubernetes pods",
        description="Write the configuration for running this site on a Kubernetes cluster "
        "through Flower's Kubernetes executor: executor.yaml (flower-superexec "
        "--executor-config), site.yaml (SuperNode, SuperExec, RBAC, network policies, "
        "ConfigMap) and the secrets they refer to, kept beside them, 0600. Each ClientApp "
        "runs in its own non-root pod with resource limits, the site's state volume mounted "
        "and its site.toml read-only. Prints the kubectl commands that load the secrets. "
        "Writes nothing if a setting is wrong.",
    )
    parser.add_argument(
        "site", metavar="SITE", help="the site's name (a DNS label); also its ledger's name"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="a new or empty directory to write to"
    )
    parser.add_argument(
        "--image",
        required=True,
        help="container image with this FedVault installed, and the `kubernetes` Python "
        "package for the SuperExec",
    )
    parser.add_argument(
        "--server", required=True, metavar="HOST:PORT", help="the federation server's site address"
    )
    parser.add_argument("--ca", required=True, metavar="CA_CERT", help="the federation's ca.crt")
    parser.add_argument(
        "--node-key",
        required=True,
        metavar="KEY",
        help="the site's node key from `fedvault keys new`; only named in the printed "
        "kubectl command, never copied",
    )
    parser.add_argument(
        "--site-file",
        required=True,
        metavar="SITE.toml",
        help="the site's own settings as for `fedvault client` (budget, privacy floor, "
        "data-path, policy-path); its file paths are paths under /data in the pods",
    )
    parser.add_argument(
        "--namespace", default="fedvault", help="namespace of every object (default: %(default)s)"
    )
    parser.add_argument(
        "--state-claim",
        metavar="PVC",
        help="existing PersistentVolumeClaim that holds the site's state, its privacy ledger "
        "(default: fedvault-SITE-state)",
    )
    parser.add_argument(
        "--data-claim",
        metavar="PVC",
        help="existing PersistentVolumeClaim with the site's data, mounted read-only at /data",
    )
    parser.add_argument(
        "--cpu",
        default="1",
        help="CPU limit of each ClientApp pod, e.g. 2 or 500m (default: %(default)s); torch "
        "runs as many threads",
    )
    parser.add_argument(
        "--memory", default="2Gi", help="memory limit of each ClientApp pod (default: %(default)s)"
    )
    parser.add_argument(
        "--max-pods",
        type=int,
        default=4,
        metavar="N",
        help="most ClientApp pods running at once (default: %(default)s)",
    )
    parser.add_argument(
        "--uid",
        type=int,
        default=DEFAULT_UID,
        help="non-root user id every container runs as (default: %(default)s)",
    )
    parser.set_defaults(func=_run)
