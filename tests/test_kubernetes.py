"""`fedvault kubernetes`: the configuration validated against what consumes it, offline.

There is no Kubernetes cluster here, so three stand-ins check the files instead:
- Flower's own code: its executor-config loader and mapping parser (what
  `flower-superexec --executor kubernetes` runs before it starts), then the pod and
  credential Secret its executor would submit for a ClientApp task, built by Flower's own
  pod builder from that config; and Flower's argument parsers for the command lines.
- Kubernetes' own schemas (v1.33, strict: an unknown field is an error), cut from
  kubernetes-validate into tests/data (scripts/kubernetes_schema_subset.py), for every
  manifest and for the pod Flower builds.
- Checks of what the schemas cannot express: names, selectors and mounts that must agree
  across objects, non-root, limits, and no secret in any file that gets applied.
Not checked (it needs a cluster): admission, scheduling, that the network policies are
enforced (that depends on the cluster's network plugin), image contents, a real run.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import stat
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml
from flwr.common.config import parse_config_args
from flwr.supercore.cli.flower_superexec import _parse_args as superexec_parser
from flwr.supercore.constant import ExecutorType, TaskType
from flwr.supercore.superexec.executor.config import load_executor_config
from flwr.supercore.superexec.executor.factory import _kubernetes_executor_config_from_mapping
from flwr.supercore.superexec.executor.kubernetes_executor import (
    _build_appio_credentials_secret,
    _build_taskexecutor_pod,
    _get_runtime_root_certificates,
)
from flwr.supercore.superexec.executor.types import ExecutionSpec
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as supernode_parser
from test_deploy_cli import in_process

from cli.main import main
from privacy.certs import (
    certificate_dns_names,
    init_certificates,
    load_certificate,
    load_private_key,
    new_node_key_pair,
    verify_server_certificate,
)

SCHEMAS = json.loads(
    (Path(__file__).parent / "data" / "kubernetes-v1.33.0-strict.json").read_text()
)
SITE = "hospital-a"
STATE_DIR = f"/var/lib/fedvault/{SITE}"
SERVICE = f"fedvault-{SITE}-supernode.fedvault.svc:9094"
SITE_TOML = """max-epsilon = 4.0
delta = 1e-5
data-path = "/data/records.csv"
policy-path = "/data/anon.toml"
"""


def k8s_validate(obj: dict) -> None:
    """Validate one object against the strict schema of its apiVersion and kind."""
    schema = SCHEMAS["kinds"][f"{obj['apiVersion']}/{obj['kind']}"]
    jsonschema.Draft202012Validator({**schema, "$defs": SCHEMAS["$defs"]}).validate(obj)


def fedvault(*args: str) -> tuple[int, str, str]:
    """`fedvault ARGS` here; (status, stdout, stderr)."""
    out = io.StringIO()
    code, err = in_process(*args, out=out)
    return code, out.getvalue(), err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    certs = init_certificates(root / "certs", "fl.example.org")
    keys = new_node_key_pair(root / "node.key")
    (root / "site.toml").write_text(SITE_TOML)
    return {"root": root, "ca": certs.ca_cert, "key": keys.private_key, "site": root / "site.toml"}


def generate(
    inputs: dict[str, Path], out: Path, *extra: str, site: str = SITE
) -> tuple[int, str, str]:
    return fedvault(
        "kubernetes", site, "--out", str(out), "--image", "registry.example.org/fedvault:0.1.0",
        "--server", "fl.example.org:9443", "--ca", str(inputs["ca"]),
        "--node-key", str(inputs["key"]), "--site-file", str(inputs["site"]),
        "--data-claim", f"{SITE}-data", "--cpu", "2", "--memory", "4Gi", *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def generated(inputs, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("k8s") / "hospital-a"
    code, stdout, err = generate(inputs, out)
    assert (code, err) == (0, ""), err
    documents = list(yaml.safe_load_all((out / "site.yaml").read_text()))
    return {
        "out": out,
        "stdout": stdout,
        "docs": {(d["kind"], d["metadata"]["name"]): d for d in documents},
    }


def printed_secret_keys(stdout: str) -> dict[str, set[str]]:
    """Secret name -> its keys, from the `kubectl create secret generic` lines printed."""
    secrets = {}
    for line in stdout.splitlines():
        words = line.split()
        if "secret" in words and "generic" in words:
            name = words[words.index("generic") + 1]
            secrets[name] = {w.split("=")[1] for w in words if w.startswith("--from-file=")}
    return secrets


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def flower_pod(out: Path) -> tuple[dict, dict]:
    """The pod and Secret Flower's Kubernetes executor would create for one ClientApp task."""
    raw = load_executor_config(str(out / "executor.yaml"), ExecutorType.KUBERNETES)
    config = _kubernetes_executor_config_from_mapping(raw)
    spec = ExecutionSpec(
        task_type=TaskType.CLIENT_APP,
        runtime_api_address=SERVICE,
        token="task-token",
        insecure=False,
        root_certificates_path=str(out / "runtime-tls" / "ca.crt"),
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=False,
        task_id=7,
    )
    ca = _get_runtime_root_certificates(spec, config)
    return (
        _build_taskexecutor_pod(spec, config, ca, "a1b2c3d4e5f6"),
        _build_appio_credentials_secret(spec, config, ca, "a1b2c3d4e5f6"),
    )


def test_flower_builds_a_valid_locked_down_clientapp_pod_from_the_executor_config(generated):
    pod, secret = flower_pod(generated["out"])
    k8s_validate(pod)
    k8s_validate(secret)
    spec = pod["spec"]
    (app,) = spec["containers"]
    assert app["command"] == ["flwr-clientapp"]
    assert app["args"][:2] == ["--runtime-api-address", SERVICE]
    assert "--root-certificates" in app["args"] and "--insecure" not in app["args"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == f"fedvault-{SITE}"
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
    assert app["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert app["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    env = {e["name"]: e["value"] for e in app["env"]}
    assert env["OMP_NUM_THREADS"] == "2" and env["FLWR_HOME"].startswith("/tmp/")
    mounts = {m["mountPath"]: m for m in app["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    state = mounts[STATE_DIR]
    assert not state.get("readOnly") and volumes[state["name"]]["persistentVolumeClaim"] == {
        "claimName": f"fedvault-{SITE}-state"
    }
    settings = mounts[f"{STATE_DIR}/site.toml"]
    assert settings["readOnly"] and settings["subPath"] == "site.toml"
    assert volumes[settings["name"]]["configMap"]["name"] == f"fedvault-{SITE}"
    data = mounts["/data"]
    assert data["readOnly"] and volumes[data["name"]]["persistentVolumeClaim"]["readOnly"]
    assert {"/tmp", "/run/flwr/appio"} <= set(mounts)
    # Flower's one-task credentials are the only Secret a ClientApp pod sees.
    assert [name for name, v in volumes.items() if "secret" in v] == ["appio-credentials"]
    policy = generated["docs"][("NetworkPolicy", f"fedvault-{SITE}-clientapp")]["spec"]
    selector = policy["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert policy["ingress"] == [] and set(policy["policyTypes"]) == {"Ingress", "Egress"}


def test_every_manifest_is_valid_kubernetes_and_the_check_can_fail(generated):
    docs = generated["docs"]
    for doc in docs.values():
        k8s_validate(doc)
    assert sorted({kind for kind, _ in docs}) == [
        "ConfigMap", "Deployment", "NetworkPolicy", "Role", "RoleBinding", "Service",
        "ServiceAccount",
    ]  # fmt: skip
    broken = copy.deepcopy(docs[("Deployment", f"fedvault-{SITE}-supernode")])
    container(broken)["securityContext"]["runAsNonroot"] = True
    with pytest.raises(jsonschema.ValidationError, match="'runAsNonroot' was unexpected"):
        k8s_validate(broken)
    broken = copy.deepcopy(docs[("Service", f"fedvault-{SITE}-supernode")])
    broken["spec"]["ports"][0]["port"] = "runtime"
    with pytest.raises(jsonschema.ValidationError):
        k8s_validate(broken)


def test_command_lines_are_what_flowers_own_parsers_accept_and_agree(generated):
    docs = generated["docs"]
    supernode = container(docs[("Deployment", f"fedvault-{SITE}-supernode")])
    superexec = container(docs[("Deployment", f"fedvault-{SITE}-superexec")])
    assert supernode["command"] == ["flower-supernode"]
    node = supernode_parser().parse_args(supernode["args"])
    assert (node.isolation, node.host, node.port) == ("process", "0.0.0.0", 9094)
    assert (node.superlink, node.insecure) == ("fl.example.org:9443", False)
    assert parse_config_args([node.node_config]) == {"state-dir": STATE_DIR}
    assert PurePosixPath(STATE_DIR).name == SITE  # the site's name in its ledger
    assert superexec["command"] == ["flower-superexec"]
    exec_args = superexec_parser().parse_args(superexec["args"])
    assert exec_args.executor == ExecutorType.KUBERNETES
    assert exec_args.runtime_api_address == SERVICE and not exec_args.insecure
    # Every file a command names is mounted where it says, from an object that holds it: the
    # ConfigMap written here, or a Secret with that key from the printed kubectl commands.
    config_map = docs[("ConfigMap", f"fedvault-{SITE}")]["data"]
    secret_keys = printed_secret_keys(generated["stdout"])
    for deployment, paths in (
        (f"fedvault-{SITE}-supernode", (node.root_certificates, node.auth_supernode_private_key,
         node.ssl_certfile, node.ssl_keyfile, node.ssl_ca_certfile,
         node.superexec_auth_secret_file)),
        (f"fedvault-{SITE}-superexec", (exec_args.executor_config, exec_args.root_certificates,
         exec_args.superexec_auth_secret_file)),
    ):  # fmt: skip
        pod = docs[("Deployment", deployment)]["spec"]["template"]["spec"]
        (only,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in only["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for path in map(PurePosixPath, paths):
            source = volumes[mounts[str(path.parent)]]
            if "secret" in source:
                held = secret_keys[source["secret"]["secretName"]]
            else:
                assert source["configMap"]["name"] == f"fedvault-{SITE}"
                held = set(config_map)
            items = source.get("secret", source.get("configMap")).get("items")
            names = {item["path"]: item["key"] for item in items} if items else {k: k for k in held}
            assert names.get(path.name) in held, path
    assert config_map["executor.yaml"] == (generated["out"] / "executor.yaml").read_text()
    assert config_map["site.toml"] == SITE_TOML
    service = docs[("Service", f"fedvault-{SITE}-supernode")]["spec"]
    template = docs[("Deployment", f"fedvault-{SITE}-supernode")]["spec"]["template"]
    assert service["selector"] == template["metadata"]["labels"]
    assert service["ports"][0]["port"] == supernode["ports"][0]["containerPort"] == 9094
    (rule,) = docs[("Role", f"fedvault-{SITE}-superexec")]["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["pods", "secrets"],
        "verbs": ["create", "delete", "list"],
    }


def test_secrets_stay_out_of_the_manifests_and_are_the_owners_alone(generated, inputs):
    out = generated["out"]
    applied = (out / "site.yaml").read_text() + (out / "executor.yaml").read_text()
    tls = out / "runtime-tls"
    auth = (out / "superexec.secret").read_bytes()
    assert len(auth) == 32 and base64.b64encode(auth).decode() not in applied
    for secret in (inputs["key"], tls / "server.key"):
        body = "".join(secret.read_text().splitlines()[1:-1])
        assert body[:40] not in applied.replace("\n", "")
    for path in (tls / "server.key", out / "superexec.secret"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tls / "ca.key").exists()
    server_cert = load_certificate(tls / "server.crt")
    verify_server_certificate(
        load_certificate(tls / "ca.crt"), server_cert, load_private_key(tls / "server.key")
    )
    assert SERVICE.rsplit(":", 1)[0] in certificate_dns_names(server_cert)
    stdout = generated["stdout"]
    assert f"--from-file=node.key={inputs['key']}" in stdout
    assert f"kubectl apply -f {out / 'site.yaml'}" in stdout


@pytest.mark.parametrize(
    ("extra", "site_toml", "site", "message"),
    [
        ((), None, "Hospital_A", "site name 'Hospital_A' must be a DNS label"),
        ((), 'data-path = "/srv/records.csv"\n', SITE, "must be a path under /data"),
        ((), 'data-path = "/data/r.csv"\ninsecure-seed = 3\n', SITE, "for simulated sites only"),
        ((), "max-epsilon = 2.0\n", SITE, "set data-path (or dataset-id)"),
        (("--cpu", "two"), None, SITE, "--cpu 'two' must be a CPU quantity"),
        (("--uid", "0"), None, SITE, "--uid must be a non-root user id"),
        (("--server", "no-port"), None, SITE, "not a HOST:PORT address"),
        (("--node-key", "/nonexistent/node.key"), None, SITE, "node key not found"),
    ],
)
def test_bad_settings_are_one_line_errors_and_write_nothing(
    inputs, tmp_path, extra, site_toml, site, message
):
    if site_toml is not None:
        inputs = {**inputs, "site": tmp_path / "site.toml"}
        inputs["site"].write_text(site_toml)
    out = tmp_path / "out"
    code, _, err = generate(inputs, out, *extra, site=site)
    assert code == 2 and err.startswith("fedvault: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not out.exists()


def test_a_node_key_readable_by_others_is_refused(inputs, tmp_path):
    key = tmp_path / "open.key"
    key.write_bytes(inputs["key"].read_bytes())
    key.chmod(0o644)
    code, _, err = generate(inputs, tmp_path / "out", "--node-key", str(key))
    assert code == 2 and "node key" in err and "accessible by other users (mode 0644)" in err
    assert not (tmp_path / "out").exists()


def test_an_existing_directory_is_never_overwritten(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "site.yaml").write_text("mine")
    code, _, err = generate(inputs, out)
    assert code == 2 and "exists and is not empty" in err
    assert [p.name for p in out.iterdir()] == ["site.yaml"]


def test_help_says_what_is_written(capsys):
    with pytest.raises(SystemExit) as done:
        main(["kubernetes", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("executor.yaml", "site.yaml", "--site-file", "--state-claim", "non-root"):
        assert phrase in text, phrase
