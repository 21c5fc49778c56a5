"""What a site needs to run its ClientApps as pods on its own Kubernetes cluster.

Flower 1.42 runs a ClientApp through the SuperNode's `--isolation process` mode: the SuperNode
only serves its Runtime API, and `flower-superexec --executor kubernetes` claims each task
there and starts one pod per task (Flower's own code builds the pod from the executor config
file, flwr/supercore/superexec/executor/kubernetes_executor.py). This writes, for one site:

- `executor.yaml`: that executor config. ClientApp pods run as a non-root user with a
  read-only root file system, CPU and memory limits, torch pinned to their CPUs, no
  service-account token, the site's state volume at the state directory the ClientApp is
  told about, the site's own `site.toml` mounted read-only over it (the app cannot rewrite
  the budget it is held to; the pods run Flower's stock `flwr-clientapp`, so build approval
  is not applied there: docs/deployment.md), and the data volume read-only.
- `site.yaml`: the manifests around it. The SuperNode (TLS to the federation, node key,
  Runtime API with TLS of its own for the pods, SuperExec authentication); the SuperExec with
  a Role to create, list and delete pods and Secrets in the namespace (what Flower's
  executor does with its per-task credentials) and nothing else; a ConfigMap with the
  executor config, the federation's CA certificate and `site.toml`; network policies that
  let ClientApp pods reach only the SuperNode's Runtime API and DNS, and nothing reach
  them. Secrets are referenced by name, never inlined.
- `runtime-tls/` and `superexec.secret`: the Runtime API's certificate (for the SuperNode's
  Service name) and the SuperExec's shared secret, 0600, to load with `kubectl create
  secret`. The printed commands do that.

The state volume is the site's privacy ledger: it is referenced, never created or deleted
here, so deleting `site.yaml` cannot delete a budget.
"""

from __future__ import annotations

import os
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml
from cryptography.hazmat.primitives import serialization

from cli.processes import FLOWER_ENV
from client.site import SITE_FILE, site_settings
from privacy.atomic import atomic_write_bytes, atomic_write_text
from privacy.certs import (
    init_certificates,
    load_certificate,
    parse_address,
)
from privacy.errors import FedVaultError

RUNTIME_PORT = 9094
STATE_ROOT = PurePosixPath("/var/lib/fedvault")
DATA_DIR = PurePosixPath("/data")
CONFIG_DIR = PurePosixPath("/etc/fedvault")
DEFAULT_UID = 10001
EXECUTOR_FILE = "executor.yaml"
MANIFEST_FILE = "site.yaml"
AUTH_SECRET_FILE = "superexec.secret"
RUNTIME_TLS_DIR = "runtime-tls"
CA_FILE = "federation-ca.crt"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
CPU = re.compile(r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")
# The longest suffix a name gets here is "-superexec"; Kubernetes names are DNS labels.
MAX_SITE_NAME = 63 - len("fedvault--superexec")
DAEMON_RESOURCES = {"cpu": "500m", "memory": "512Mi"}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
# Every container's only writable place: the ClientApp's home, Flower's app installs.
SCRATCH = {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}
SCRATCH_MOUNT = {"name": "tmp", "mountPath": "/tmp"}


@dataclass(frozen=True)
class KubernetesSite:
    """One site's choices; everything else is derived, so the files agree with each other."""

    name: str
    image: str
    server: str
    federation_ca: Path
    site_file: Path
    namespace: str = "fedvault"
    state_claim: str = ""
    data_claim: str = ""
    cpu: str = "1"
    memory: str = "2Gi"
    active_pods: int = 4
    uid: int = DEFAULT_UID

    def __post_init__(self) -> None:
        if not DNS_LABEL.match(self.name) or len(self.name) > MAX_SITE_NAME:
            raise FedVaultError(
                f"site name {self.name!r} must be a DNS label of at most {MAX_SITE_NAME} "
                "characters (lower-case letters, digits, '-')"
            )
        for what, value in (("namespace", self.namespace), ("--state-claim", self.claim)):
            if not DNS_LABEL.match(value):
                raise FedVaultError(f"{what} {value!r} must be a DNS label")
        if self.data_claim and not DNS_LABEL.match(self.data_claim):
            raise FedVaultError(f"--data-claim {self.data_claim!r} must be a DNS label")
        if not self.image.strip() or any(c.isspace() for c in self.image):
            raise FedVaultError(f"--image {self.image!r} must name a container image")
        parse_address(self.server)
        if not CPU.match(self.cpu):
            raise FedVaultError(f"--cpu {self.cpu!r} must be a CPU quantity such as 2 or 500m")
        if not QUANTITY.match(self.memory):
            raise FedVaultError(f"--memory {self.memory!r} must be a quantity such as 4Gi")
        if self.active_pods < 1:
            raise FedVaultError(f"--max-pods must be at least 1, got {self.active_pods}")
        if self.uid < 1:
            raise FedVaultError(f"--uid must be a non-root user id, got {self.uid}")

    @property
    def prefix(self) -> str:
        return f"fedvault-{self.name}"

    @property
    def claim(self) -> str:
        return self.state_claim or f"{self.prefix}-state"

    @property
    def state_dir(self) -> PurePosixPath:
        """Where the ClientApp finds the site's state; its last part is the site's name."""
        return STATE_ROOT / self.name

    @property
    def runtime_host(self) -> str:
        """The SuperNode's Service name, which ClientApp pods and the SuperExec dial."""
        return f"{self.prefix}-supernode.{self.namespace}.svc"

    @property
    def runtime_address(self) -> str:
        return f"{self.runtime_host}:{RUNTIME_PORT}"

    @property
    def torch_threads(self) -> str:
        """One torch thread per CPU the pod may use: more threads only oversubscribe it."""
        cores = int(self.cpu[:-1]) / 1000 if self.cpu.endswith("m") else float(self.cpu)
        return str(max(1, int(cores)))

    def labels(self, role: str) -> dict[str, str]:
        return {
            "app.kubernetes.io/part-of": "fedvault",
            "fedvault/site": self.name,
            "fedvault/role": role,
        }


def read_site_toml(site: KubernetesSite) -> str:
    """The site's settings file, validated as the ClientApp will read it; its text.

    Its file paths are paths inside the pods, so they must lie on the data volume.
    """
    try:
        text = site.site_file.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except FileNotFoundError:
        raise FedVaultError(f"site settings not found: {site.site_file}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FedVaultError(f"cannot read site settings {site.site_file}: {exc}") from None
    settings = site_settings(raw, str(site.site_file), simulated=False)
    for key in ("data-path", "policy-path"):
        if key not in settings:
            continue
        path = PurePosixPath(settings[key])
        if not site.data_claim:
            raise FedVaultError(
                f"{site.site_file}: {key} needs the data volume: give --data-claim, and put the "
                f"file on it (mounted at {DATA_DIR})"
            )
        if not path.is_absolute() or DATA_DIR not in path.parents:
            raise FedVaultError(
                f"{site.site_file}: {key} {settings[key]!r} must be a path under {DATA_DIR}, "
                "where the data volume is mounted in the ClientApp pods"
            )
    if "data-path" not in settings and "dataset-id" not in settings:
        raise FedVaultError(f"{site.site_file}: set data-path (or dataset-id) for the site's data")
    return text


def _env(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in values.items()]


def _base_env() -> dict[str, str]:
    """A writable home on the pod's scratch volume, and Flower offline."""
    return {**FLOWER_ENV, "HOME": "/tmp", "FLWR_HOME": "/tmp/flwr"}


def _pod_security(site: KubernetesSite) -> dict:
    """Non-root. The group owns the state volume (see the docs for the first mount)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": site.uid,
        "runAsGroup": site.uid,
        "fsGroup": site.uid,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _config_map(site: KubernetesSite, key: str) -> dict:
    return {"configMap": {"name": site.prefix, "items": [{"key": key, "path": key}]}}


def executor_config(site: KubernetesSite) -> dict:
    """The `--executor-config` of `flower-superexec --executor kubernetes` (Flower's keys)."""
    volumes = [
        {"name": "state", "persistentVolumeClaim": {"claimName": site.claim}},
        {"name": "site-settings", **_config_map(site, SITE_FILE)},
        SCRATCH,
    ]
    mounts = [
        {"name": "state", "mountPath": str(site.state_dir)},
        {
            "name": "site-settings",
            "mountPath": str(site.state_dir / SITE_FILE),
            "subPath": SITE_FILE,
            "readOnly": True,
        },
        SCRATCH_MOUNT,
    ]
    if site.data_claim:
        volumes.append(
            {
                "name": "data",
                "persistentVolumeClaim": {"claimName": site.data_claim, "readOnly": True},
            }
        )
        mounts.append({"name": "data", "mountPath": str(DATA_DIR), "readOnly": True})
    limits = {"cpu": site.cpu, "memory": site.memory}
    return {
        "namespace": site.namespace,
        "image": site.image,
        "image-pull-policy": "IfNotPresent",
        "labels": site.labels("clientapp"),
        "service-account-name": site.prefix,
        "active-pod-budget": site.active_pods,
        "resources": {"requests": dict(limits), "limits": limits},
        "env": _env({**_base_env(), "OMP_NUM_THREADS": site.torch_threads}),
        "volumes": volumes,
        "volume-mounts": mounts,
        "pod-security-context": _pod_security(site),
        "container-security-context": CONTAINER_SECURITY,
    }


def _metadata(site: KubernetesSite, name: str, role: str) -> dict:
    return {"name": name, "namespace": site.namespace, "labels": site.labels(role)}


def _secret(name: str, keys: tuple[str, ...] = ()) -> dict:
    """A Secret's files, readable by the pod's group only (its fsGroup); `keys`: only these."""
    source: dict = {"secretName": name, "defaultMode": 0o440}
    if keys:
        source["items"] = [{"key": key, "path": key} for key in keys]
    return {"secret": source}


def _deployment(
    site: KubernetesSite, role: str, command: list[str], files: dict[str, dict], account: str
) -> dict:
    """One replica of one container, never two at once: two SuperNodes would share a node key.

    `files` maps a directory under CONFIG_DIR to the volume source mounted there read-only.
    """
    container = {
        "name": role,
        "image": site.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command[:1],
        "args": command[1:],
        "env": _env(_base_env()),
        "resources": {"requests": dict(DAEMON_RESOURCES), "limits": dict(DAEMON_RESOURCES)},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            *(
                {"name": name, "mountPath": str(CONFIG_DIR / name), "readOnly": True}
                for name in files
            ),
            SCRATCH_MOUNT,
        ],
    }
    if role == "supernode":
        container["ports"] = [{"name": "runtime", "containerPort": RUNTIME_PORT, "protocol": "TCP"}]
    pod = {
        "serviceAccountName": account,
        # Only the SuperExec talks to the Kubernetes API.
        "automountServiceAccountToken": role == "superexec",
        "securityContext": _pod_security(site),
        "containers": [container],
        "volumes": [*({"name": name, **source} for name, source in files.items()), SCRATCH],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(site, f"{site.prefix}-{role}", role),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": site.labels(role)},
            "template": {"metadata": {"labels": site.labels(role)}, "spec": pod},
        },
    }


def supernode_command(site: KubernetesSite) -> list[str]:
    """`flower-supernode` with TLS both ways, node authentication and process isolation."""
    tls, auth = CONFIG_DIR / "runtime-tls", CONFIG_DIR / "superexec-auth"
    return [
        "flower-supernode",
        "--superlink", site.server,
        "--root-certificates", str(CONFIG_DIR / "federation" / CA_FILE),
        "--auth-supernode-private-key", str(CONFIG_DIR / "node-key" / "node.key"),
        "--node-config", f'state-dir="{site.state_dir}"',
        "--isolation", "process",
        "--host", "0.0.0.0",
        "--port", str(RUNTIME_PORT),
        "--ssl-certfile", str(tls / "tls.crt"),
        "--ssl-keyfile", str(tls / "tls.key"),
        "--ssl-ca-certfile", str(tls / "ca.crt"),
        "--superexec-auth-secret-file", str(auth / "secret"),
    ]  # fmt: skip


def superexec_command(site: KubernetesSite) -> list[str]:
    """`flower-superexec` starting one ClientApp pod per task through the SuperNode's Service."""
    return [
        "flower-superexec",
        "--executor", "kubernetes",
        "--executor-config", str(CONFIG_DIR / "executor" / EXECUTOR_FILE),
        "--runtime-api-address", site.runtime_address,
        "--root-certificates", str(CONFIG_DIR / "runtime-ca" / "ca.crt"),
        "--superexec-auth-secret-file", str(CONFIG_DIR / "superexec-auth" / "secret"),
    ]  # fmt: skip


def secret_names(site: KubernetesSite) -> dict[str, str]:
    return {
        "node-key": f"{site.prefix}-node-key",
        "runtime-tls": f"{site.prefix}-runtime-tls",
        "superexec-auth": f"{site.prefix}-superexec-auth",
    }


def manifests(site: KubernetesSite, executor_yaml: str, site_toml: str, ca_pem: str) -> list[dict]:
    """Every object the site applies, in an order `kubectl apply` accepts."""
    secrets = secret_names(site)
    supernode_files = {
        "federation": _config_map(site, CA_FILE),
        "node-key": _secret(secrets["node-key"]),
        "runtime-tls": _secret(secrets["runtime-tls"]),
        "superexec-auth": _secret(secrets["superexec-auth"]),
    }
    superexec_files = {
        "executor": _config_map(site, EXECUTOR_FILE),
        "runtime-ca": _secret(secrets["runtime-tls"], ("ca.crt",)),
        "superexec-auth": _secret(secrets["superexec-auth"]),
    }
    supernode, superexec, clientapp = (
        {"matchLabels": site.labels(role)} for role in ("supernode", "superexec", "clientapp")
    )
    runtime_port = {"protocol": "TCP", "port": RUNTIME_PORT}
    dns = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(site, site.prefix, "site"),
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(site, f"{site.prefix}-superexec", "superexec"),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(site, f"{site.prefix}-superexec", "superexec"),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "secrets"],
                    "verbs": ["create", "delete", "list"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(site, f"{site.prefix}-superexec", "superexec"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"{site.prefix}-superexec",
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": f"{site.prefix}-superexec",
                    "namespace": site.namespace,
                }
            ],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(site, site.prefix, "site"),
            "data": {EXECUTOR_FILE: executor_yaml, SITE_FILE: site_toml, CA_FILE: ca_pem},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(site, f"{site.prefix}-supernode", "supernode"),
            "spec": {
                "type": "ClusterIP",
                "selector": site.labels("supernode"),
                "ports": [{"name": "runtime", **runtime_port, "targetPort": RUNTIME_PORT}],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(site, f"{site.prefix}-clientapp", "clientapp"),
            "spec": {
                "podSelector": clientapp,
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": [{"to": [{"podSelector": supernode}], "ports": [runtime_port]}, dns],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(site, f"{site.prefix}-supernode", "supernode"),
            "spec": {
                "podSelector": supernode,
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": clientapp}, {"podSelector": superexec}],
                        "ports": [runtime_port],
                    }
                ],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _metadata(site, f"{site.prefix}-superexec", "superexec"),
            "spec": {"podSelector": superexec, "policyTypes": ["Ingress"], "ingress": []},
        },
        _deployment(site, "supernode", supernode_command(site), supernode_files, site.prefix),
        _deployment(
            site, "superexec", superexec_command(site), superexec_files, f"{site.prefix}-superexec"
        ),
    ]


class _Dumper(yaml.SafeDumper):
    """Plain YAML: repeated values written out, not as anchors and aliases."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _yaml(*documents: object) -> str:
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)


def write_site(site: KubernetesSite, out: Path) -> None:
    """Validate, then write every file into `out`, which must be new or empty.

    Nothing is left behind when a step fails.
    """
    site_toml = read_site_toml(site)
    ca = load_certificate(site.federation_ca, "federation CA certificate")
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode("ascii")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FedVaultError(f"{out} exists and is not empty; choose a new directory")
    fresh = not out.exists()
    executor_yaml = _yaml(executor_config(site))
    try:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write_text(out / EXECUTOR_FILE, executor_yaml)
        documents = manifests(site, executor_yaml, site_toml, ca_pem)
        atomic_write_text(out / MANIFEST_FILE, _yaml(*documents))
        tls = init_certificates(out / RUNTIME_TLS_DIR, site.runtime_host)
        # The Runtime API's CA vouches for this one certificate; nothing needs its key.
        tls.ca_key.unlink()
        atomic_write_bytes(out / AUTH_SECRET_FILE, os.urandom(32), 0o600)
    except BaseException:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise


def secret_commands(site: KubernetesSite, out: Path, node_key: Path) -> list[str]:
    """The `kubectl create secret` lines that load the secrets `site.yaml` refers to."""
    names, tls, ns = secret_names(site), out / RUNTIME_TLS_DIR, site.namespace
    return [
        f"kubectl -n {ns} create secret generic {names['node-key']} "
        f"--from-file=node.key={node_key}",
        f"kubectl -n {ns} create secret generic {names['runtime-tls']} "
        f"--from-file=ca.crt={tls / 'ca.crt'} --from-file=tls.crt={tls / 'server.crt'} "
        f"--from-file=tls.key={tls / 'server.key'}",
        f"kubectl -n {ns} create secret generic {names['superexec-auth']} "
        f"--from-file=secret={out / AUTH_SECRET_FILE}",
    ]
