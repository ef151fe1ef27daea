"""``deploy/kubernetes/`` stays true to the server it deploys.

Every YAML document there is parsed; every container that runs ``melange-server`` has
its subcommand and each ``--flag`` it passes checked against the real ``melange-server
[subcommand] --help`` (and a choice's value against the choices the help lists), each
environment variable it sets against the ones docs/server.md documents. The shape is
checked too: every document names its apiVersion, kind and name; the server's
Deployment runs several replicas (rolled one at a time, with a disruption budget) and
only on what replicas can share (PostgreSQL with the DSN from a Secret, a bucket for the
storage and the source cache, a ReadWriteMany data volume), each advertising its pod's
address when the server has ``--advertise-url``; its probes ask /healthz, its mounts
carry the files its flags name, and the backends ConfigMap is accepted by the server's
own backends loader and lists pods the BuildKit StatefulSet has.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from melange2.farm.certs import make_certs
from melange2.pool.config import load_pool_config
from melange2.server import cli

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
SERVER_DOC = ROOT / "docs" / "server.md"
PROGRAM = "melange-server"
#: names of environment variables that carry secrets: never a literal value
SECRET_NAME = re.compile(r"DSN|SECRET|PASSWORD|TOKEN|KEY")


@dataclass(frozen=True, kw_only=True)
class Document:
    path: Path
    index: int
    body: dict[str, Any]

    @property
    def where(self) -> str:
        name = self.body.get("metadata", {}).get("name", "?")
        return f"{self.path.relative_to(ROOT)}[{self.index}] {self.body.get('kind')} {name}"


@dataclass(frozen=True, kw_only=True)
class ServerContainer:
    doc: Document
    pod: dict[str, Any]
    container: dict[str, Any]
    argv: tuple[str, ...]  #: what follows the program: subcommand, flags, values


def load_documents() -> list[Document]:
    docs = []
    for path in sorted(MANIFESTS.rglob("*.y*ml")):
        for index, body in enumerate(yaml.safe_load_all(path.read_text())):
            if body is not None:
                assert isinstance(body, dict), f"{path}[{index}]: not a mapping"
                docs.append(Document(path=path, index=index, body=body))
    return docs


def pod_spec(body: dict[str, Any]) -> dict[str, Any] | None:
    kind = body.get("kind")
    spec = body.get("spec") or {}
    if kind == "Pod":
        return dict(spec)
    if kind == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"):
        return dict(spec["template"]["spec"])
    return None


def containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod.get("initContainers") or []
    yield from pod.get("containers") or []


def server_argv(container: dict[str, Any]) -> tuple[str, ...] | None:
    """The arguments after ``melange-server`` if the container runs it, else None."""
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if command and PurePosixPath(command[0]).name == PROGRAM:
        return (*command[1:], *args)
    if not command and args and PurePosixPath(args[0]).name == PROGRAM:
        return tuple(args[1:])
    return None


def server_containers(docs: list[Document]) -> list[ServerContainer]:
    found = []
    for doc in docs:
        pod = pod_spec(doc.body)
        if pod is None:
            continue
        for container in containers(pod):
            argv = server_argv(container)
            if argv is None:
                words = [*(container.get("command") or []), *(container.get("args") or [])]
                # a server started some other way (sh -c "melange-server ...") escapes
                # the checks below: refuse it
                assert not any(PROGRAM in str(w) for w in words), (
                    f"{doc.where}: container {container.get('name')} runs {PROGRAM} "
                    "in a way this test cannot read (give it as command/args)"
                )
                continue
            found.append(ServerContainer(doc=doc, pod=pod, container=container, argv=argv))
    return found


# -- the checker: melange-server's own --help decides ------------------------------------


def help_text(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name=PROGRAM)
    assert result.exit_code == 0, f"{PROGRAM} {' '.join(path)} --help: {result.output}"
    return result.output


def help_options(text: str) -> dict[str, tuple[str, ...] | None]:
    """Each option the help lists, with its choices when it shows ``[a|b|c]``."""
    options: dict[str, tuple[str, ...] | None] = {}
    for line in text.splitlines():
        # an option's own line is indented by two; wrapped help text by many more
        if not re.match(r"^  -", line):
            continue
        column = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        choice = re.search(r"\[([^\]]+)\]", column)
        choices = tuple(choice.group(1).split("|")) if choice else None
        for name in re.findall(r"(?<![\w-])--?[A-Za-z0-9][\w-]*", column):
            options[name] = choices
    return options


def resolve(argv: tuple[str, ...]) -> tuple[tuple[str, ...], click.Command, tuple[str, ...]]:
    """The subcommand path argv names, its command and the rest of argv; raises
    LookupError for a word that is no subcommand of a group."""
    command: click.Command = cli
    path: list[str] = []
    i = 0
    while isinstance(command, click.Group):
        word = argv[i] if i < len(argv) else None
        if word is None or word.startswith("-") or word not in command.commands:
            if command is cli:  # `melange-server [FLAGS]` is `melange-server serve [FLAGS]`
                command = cli.commands["serve"]
                break
            raise LookupError(f"{' '.join([PROGRAM, *path])}: no subcommand {word!r}")
        command = command.commands[word]
        path.append(word)
        i += 1
    return tuple(path), command, argv[i:]


def problems(argv: tuple[str, ...]) -> list[str]:
    """What in ``melange-server <argv>`` its --help does not know."""
    try:
        path, command, rest = resolve(argv)
    except LookupError as exc:
        return [str(exc)]
    name = " ".join([PROGRAM, *path]) if path else PROGRAM
    takes_arguments = any(isinstance(p, click.Argument) for p in command.params)
    if rest and not rest[0].startswith("-") and not takes_arguments:
        return [f"{name}: {rest[0]!r} is no subcommand or flag (it takes no arguments)"]
    options = help_options(help_text(path))
    found = []
    for i, word in enumerate(rest):
        if word == "--":
            break
        if not word.startswith("-"):
            continue
        flag, eq, value = word.partition("=")
        if flag not in options:
            found.append(f"{name}: {flag} is not in its --help")
            continue
        choices = options[flag]
        if choices is not None:
            given = value if eq else (rest[i + 1] if i + 1 < len(rest) else "")
            if given not in choices:
                found.append(f"{name}: {flag} {given!r} is not one of {'|'.join(choices)}")
    return found


def flag_values(argv: tuple[str, ...]) -> dict[str, str]:
    """``--flag=value`` and ``--flag value`` pairs (the last one of a flag wins)."""
    values = {}
    for i, word in enumerate(argv):
        if word.startswith("--"):
            flag, eq, value = word.partition("=")
            if eq:
                values[flag] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                values[flag] = argv[i + 1]
            else:
                values[flag] = ""
    return values


def documented_env() -> tuple[set[str], set[str]]:
    """The variable names docs/server.md shows in backticks, and the prefixes it shows
    as ``PREFIX_<NAME>``."""
    names: set[str] = set()
    prefixes: set[str] = set()
    for span in re.findall(r"`([^`\n]+)`", SERVER_DOC.read_text()):
        m = re.match(r"^([A-Z][A-Z0-9_]*[A-Z0-9_])(<NAME>)?(=\S*)?$", span)
        if m:
            (prefixes if m.group(2) else names).add(m.group(1))
    return names, prefixes


# -- the checker can fail ---------------------------------------------------------------


def test_the_checker_refuses_what_the_help_does_not_know() -> None:
    assert problems(("serve", "--store=postgres", "--listen-addr", ":8080")) == []
    assert problems(("--store", "postgres")) == []  # serve implied
    assert problems(("tokens", "create", "--name=ops", "--role=admin")) == []
    assert problems(("serve", "--postgress-dsn=x")) == [
        "melange-server serve: --postgress-dsn is not in its --help"
    ]
    assert problems(("serve", "--store=postgresql")) == [
        "melange-server serve: --store 'postgresql' is not one of sqlite|postgres|memory"
    ]
    assert problems(("tokens", "create", "--role", "root")) == [
        "melange-server tokens create: --role 'root' is not one of read|submit|admin"
    ]
    assert problems(("tokens", "creat", "--name=ops")) == [
        "melange-server tokens: no subcommand 'creat'"
    ]
    assert problems(("serv", "--store=postgres")) == [
        "melange-server: 'serv' is no subcommand or flag (it takes no arguments)"
    ]
    # a flag of another subcommand is not this one's
    assert problems(("tokens", "create", "--registry=r:5000")) == [
        "melange-server tokens create: --registry is not in its --help"
    ]


def test_help_options_reads_option_lines_only() -> None:
    options = help_options(help_text(("serve",)))
    assert options["--store"] == ("sqlite", "postgres", "memory")
    assert options["--s3-path-style"] is None and "-h" in options and "--tlscacert" in options
    # a flag only the prose mentions (a wrapped help line, the description) is no option
    text = (
        "Usage: x [OPTIONS]\n\n  Made with --made-up in mind.\n\nOptions:\n"
        "  --real TEXT        Read like\n"
        "                     --made-up says.\n"
        "  --pick [a|b]       One of two.\n"
    )
    assert help_options(text) == {"--real": None, "--pick": ("a", "b")}
    tokens = help_options(help_text(("tokens", "create")))
    assert "--buildkit-addr" not in tokens and "--postgres-dsn" in tokens


# -- the manifests ----------------------------------------------------------------------

DOCS = load_documents()
SERVERS = server_containers(DOCS)


def test_manifests_are_there() -> None:
    kinds = {d.body["kind"] for d in DOCS}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "Job"} <= kinds
    # the serving Deployment and the bootstrap Job at least
    assert {s.doc.body["kind"] for s in SERVERS} == {"Deployment", "Job"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.where)
def test_every_document_has_the_kubernetes_shape(doc: Document) -> None:
    body = doc.body
    assert isinstance(body.get("apiVersion"), str) and body["apiVersion"], doc.where
    assert isinstance(body.get("kind"), str) and body["kind"], doc.where
    assert isinstance(body.get("metadata", {}).get("name"), str), doc.where
    if body["kind"] != "Namespace":
        assert body["metadata"].get("namespace") == "melange", doc.where
    if body["kind"] in ("Deployment", "StatefulSet"):
        selector = body["spec"]["selector"]["matchLabels"]
        labels = body["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{doc.where}: selector matches no pod"
    pod = pod_spec(body)
    if pod is not None:
        volumes = {v["name"] for v in pod.get("volumes") or []}
        claims = {
            t["metadata"]["name"] for t in body.get("spec", {}).get("volumeClaimTemplates") or []
        }
        for container in containers(pod):
            assert container.get("image"), f"{doc.where}: {container.get('name')} has no image"
            assert container.get("resources", {}).get("requests"), (
                f"{doc.where}: {container['name']} requests no resources"
            )
            for mount in container.get("volumeMounts") or []:
                assert mount["name"] in volumes | claims, (
                    f"{doc.where}: {container['name']} mounts unknown volume {mount['name']}"
                )


@pytest.mark.parametrize("server", SERVERS, ids=lambda s: s.doc.where)
def test_every_flag_passed_is_in_the_help(server: ServerContainer) -> None:
    assert problems(server.argv) == [], f"{server.doc.where}: {PROGRAM} {' '.join(server.argv)}"


def _expanded_from_downward_api(server: ServerContainer, var: dict[str, Any]) -> bool:
    """A variable the pod's own fields give (``fieldRef``) that the arguments use as
    ``$(NAME)``: Kubernetes expands it there; the server never reads it."""
    field_ref = (var.get("valueFrom") or {}).get("fieldRef")
    return field_ref is not None and any(f"$({var['name']})" in a for a in server.argv)


@pytest.mark.parametrize("server", SERVERS, ids=lambda s: s.doc.where)
def test_every_env_var_set_is_documented(server: ServerContainer) -> None:
    names, prefixes = documented_env()
    assert "POSTGRES_DSN" in names and "SECRET_ENV_" in prefixes  # the parse found them
    assert not server.container.get("envFrom"), (
        f"{server.doc.where}: envFrom hides which variables are set; name each in env"
    )
    env = server.container.get("env") or []
    for var in env:
        name = var["name"]
        if _expanded_from_downward_api(server, var):
            continue  # Kubernetes' own $(NAME) in the arguments, not a server setting
        assert name in names or any(name.startswith(p) for p in prefixes), (
            f"{server.doc.where}: env {name} is not documented in docs/server.md"
        )
        if SECRET_NAME.search(name) and not name.startswith("SECRET_ENV_"):
            assert "secretKeyRef" in (var.get("valueFrom") or {}), (
                f"{server.doc.where}: env {name} must come from a Secret"
            )
    flags = flag_values(server.argv)
    if flags.get("--store") == "postgres":
        assert "--postgres-dsn" in flags or "POSTGRES_DSN" in {v["name"] for v in env}, (
            f"{server.doc.where}: --store postgres without a DSN"
        )
    assert "--no-auth" not in flags, f"{server.doc.where}: a deployment keeps its tokens"


def the(kind: str, name: str) -> dict[str, Any]:
    found = [d.body for d in DOCS if d.body["kind"] == kind and d.body["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} documents"
    return found[0]


def serving() -> ServerContainer:
    (server,) = [s for s in SERVERS if s.doc.body["kind"] == "Deployment"]
    return server


def shares_one_farm(server: ServerContainer) -> list[str]:
    """Why the replicas of ``server``'s Deployment would not share one farm (empty when
    they do): one PostgreSQL database from a Secret, storage and source cache in a
    bucket, a data directory every replica mounts."""
    flags = flag_values(server.argv)
    env = {v["name"]: v for v in server.container.get("env") or []}
    found = []
    if flags.get("--store") != "postgres":
        found.append(f"--store {flags.get('--store', 'sqlite')!r}: one process's store")
    if "--postgres-dsn" in flags:
        found.append("--postgres-dsn on the command line: the DSN holds a password")
    elif "secretKeyRef" not in (env.get("POSTGRES_DSN", {}).get("valueFrom") or {}):
        found.append("POSTGRES_DSN does not come from a Secret")
    if not ({"--s3-bucket", "--gcs-bucket"} & flags.keys()):
        found.append("no bucket: the storage would be each pod's --output-dir")
    if "--memory-storage" in flags:
        found.append("--memory-storage: each pod's memory")
    if not flags.get("--source-cache", "").startswith(("s3://", "gs://")):
        found.append("the source cache is not in a bucket")
    data = volume(server.pod, mounted(server.container, flags["--data-dir"]))
    claim = data.get("persistentVolumeClaim", {}).get("claimName")
    if claim is None:
        found.append(f"--data-dir is on {data['name']}, no volume the replicas share")
    elif "ReadWriteMany" not in the("PersistentVolumeClaim", claim)["spec"]["accessModes"]:
        found.append(f"--data-dir's claim {claim} is not ReadWriteMany")
    return found


def test_the_server_runs_several_replicas_on_one_farm() -> None:
    server = serving()
    spec = server.doc.body["spec"]
    assert spec["replicas"] > 1, "the deployment shows the replicated topology (issue 16)"
    assert shares_one_farm(server) == []
    # a rollout replaces one pod at a time, the others serving; a drain likewise
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] in (1, "1")
    labels = spec["template"]["metadata"]["labels"]
    budgets = [
        d.body
        for d in DOCS
        if d.body["kind"] == "PodDisruptionBudget"
        and d.body["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    assert budgets, "no PodDisruptionBudget for the server's pods"
    # PostgreSQL takes every replica's connections (at most 30 each, docs/server.md)
    postgres = the("StatefulSet", "postgres")
    (db,) = postgres["spec"]["template"]["spec"]["containers"]
    args = [str(a) for a in db.get("args") or []]
    settings = dict(
        a.split("=", 1) for prev, a in zip(["", *args], args, strict=False) if prev == "-c"
    )
    assert 30 * spec["replicas"] + 10 <= int(settings.get("max_connections", "100"))


def test_the_replicas_advertise_their_pod_address() -> None:
    """With ``--advertise-url`` (how replicas reach each other, e.g. to follow a log a
    package writes elsewhere), each pod advertises its own IP from the downward API."""
    server = serving()
    flags = flag_values(server.argv)
    if "--advertise-url" not in help_options(help_text(("serve",))):
        # a server without the flag: the manifests may not pass it (the flag test says
        # so too) and replicas find each other through the database alone
        assert "--advertise-url" not in flags
        return
    url = flags["--advertise-url"]
    env = {v["name"]: v for v in server.container.get("env") or []}
    refs = re.findall(r"\$\((\w+)\)", url)
    assert refs, f"--advertise-url={url}: no $(VAR) of the pod's address"
    (var,) = refs
    field = (env[var].get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
    assert field == "status.podIP", f"{var} is not the pod's IP"
    ports = {p["containerPort"] for p in server.container["ports"]}
    listen = flag_values(server.argv).get("--listen-addr", ":8080")
    assert int(listen.rpartition(":")[2]) in ports
    assert url.rstrip("/").endswith(f":{listen.rpartition(':')[2]}"), url


def test_the_replica_checker_can_fail() -> None:
    """What the topology check refuses: one replica's store or storage made shared."""
    good = serving()

    def variant(*drop: str, add: tuple[str, ...] = (), env: list[Any] | None = None) -> list[str]:
        argv = tuple(a for a in good.argv if a.partition("=")[0] not in drop) + add
        container = dict(good.container)
        if env is not None:
            container["env"] = env
        return shares_one_farm(
            ServerContainer(doc=good.doc, pod=good.pod, container=container, argv=argv)
        )

    assert variant() == []
    assert variant("--store") == ["--store 'sqlite': one process's store"]
    assert variant("--s3-bucket", "--s3-region") == [
        "no bucket: the storage would be each pod's --output-dir"
    ]
    assert variant("--source-cache", add=("--source-cache=/var/lib/melange/sources",)) == [
        "the source cache is not in a bucket"
    ]
    assert variant(env=[{"name": "POSTGRES_DSN", "value": "postgresql://melange:pw@db/m"}]) == [
        "POSTGRES_DSN does not come from a Secret"
    ]
    assert (
        "--postgres-dsn on the command line" in variant(add=("--postgres-dsn=postgresql://x",))[0]
    )
    pod = dict(good.pod)
    pod["volumes"] = [
        {"name": "data", "emptyDir": {}} if v["name"] == "data" else v for v in pod["volumes"]
    ]
    assert shares_one_farm(
        ServerContainer(doc=good.doc, pod=pod, container=good.container, argv=good.argv)
    ) == ["--data-dir is on data, no volume the replicas share"]


def test_the_server_is_probed_on_healthz_and_reached_by_a_service() -> None:
    server = serving()
    container = server.container
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen = flag_values(server.argv).get("--listen-addr", ":8080")
    assert int(listen.rpartition(":")[2]) in ports.values()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert get["port"] in ports or get["port"] in ports.values(), probe
    labels = server.doc.body["spec"]["template"]["metadata"]["labels"]
    services = [
        d.body
        for d in DOCS
        if d.body["kind"] == "Service" and d.body["spec"]["selector"].items() <= labels.items()
    ]
    assert services and all(
        p["targetPort"] in ports or p["targetPort"] in ports.values()
        for s in services
        for p in s["spec"]["ports"]
    )


def mounted(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volumeMount a file path lies under."""
    for mount in container.get("volumeMounts") or []:
        root = PurePosixPath(mount["mountPath"])
        if PurePosixPath(path) == root or root in PurePosixPath(path).parents:
            return dict(mount)
    raise AssertionError(f"{path} is on no volume of {container['name']}")


def volume(pod: dict[str, Any], mount: dict[str, Any]) -> dict[str, Any]:
    (found,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return dict(found)


def test_the_files_the_flags_name_are_mounted() -> None:
    server = serving()
    flags = flag_values(server.argv)
    # storage in a bucket, state in PostgreSQL: nothing but the data dir on the pod's disk
    assert "--s3-bucket" in flags or "--gcs-bucket" in flags
    assert flags.get("--source-cache", "").startswith(("s3://", "gs://"))
    data = mounted(server.container, flags["--data-dir"])
    assert "persistentVolumeClaim" in volume(server.pod, data)
    key = mounted(server.container, flags["--signing-key"])
    assert "secret" in volume(server.pod, key)  # its .pub beside it, from the same Secret
    backends = mounted(server.container, flags["--backends-config"])
    assert "configMap" in volume(server.pod, backends)


def test_the_backends_configmap_loads_and_names_the_buildkit_pods(tmp_path: Path) -> None:
    server = serving()
    flags = flag_values(server.argv)
    mount = mounted(server.container, flags["--backends-config"])
    config_map = the("ConfigMap", volume(server.pod, mount)["configMap"]["name"])
    text = config_map["data"][
        mount.get("subPath") or PurePosixPath(flags["--backends-config"]).name
    ]
    raw = yaml.safe_load(text)
    # every tls file is on a Secret volume of the server
    files = {
        value
        for b in raw["backends"]
        for field, value in (b.get("tls") or {}).items()
        if field != "serverName"
    }
    assert files, "the daemons are reached over TLS"
    for path in files:
        assert "secret" in volume(server.pod, mounted(server.container, path)), path
    # the server's own loader accepts it, with real certificates where the Secret would be
    certs = make_certs(tmp_path / "certs", hosts=["localhost"])
    by_name = {
        "ca.pem": certs.ca_cert,
        "client.pem": certs.client_cert,
        "client-key.pem": certs.client_key,
    }
    for path in files:
        assert PurePosixPath(path).name in by_name, path
        text = text.replace(path, str(by_name[PurePosixPath(path).name]))
    staged = tmp_path / "backends.yaml"
    staged.write_text(text)
    pool = load_pool_config(staged)
    assert all(b.tls is not None for b in pool.backends)
    # each address is a pod of the BuildKit StatefulSet, on the port its Service serves
    sts = the("StatefulSet", "buildkitd")
    svc = the("Service", sts["spec"]["serviceName"])
    namespace = sts["metadata"]["namespace"]
    pods = {
        f"tcp://{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.{namespace}.svc:{p['port']}"
        for i in range(sts["spec"]["replicas"])
        for p in svc["spec"]["ports"]
    }
    assert {b.addr for b in pool.backends} == pods
    # the daemons' resources are what the backends declare
    (daemon,) = sts["spec"]["template"]["spec"]["containers"]
    limits = daemon["resources"]["limits"]
    for b in raw["backends"]:
        assert (str(b["cpu"]), str(b["memory"])) == (str(limits["cpu"]), str(limits["memory"]))


def test_the_daemons_serve_tls_and_trust_the_registry() -> None:
    server = serving()
    sts = the("StatefulSet", "buildkitd")
    (daemon,) = sts["spec"]["template"]["spec"]["containers"]
    flags = {a.partition("=")[0] for a in daemon["args"]}
    assert {"--tlscacert", "--tlscert", "--tlskey"} <= flags
    config = the("ConfigMap", "buildkitd-config")["data"]["buildkitd.toml"]
    registry = flag_values(server.argv)["--registry"]
    assert f'[registry."{registry}"]' in config
