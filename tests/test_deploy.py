"""What can be checked of the Dockerfile, compose file and Kubernetes manifests without
Docker or a cluster: they must agree with the CLI, with each other and with the repository."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from skor_bridge.capture import triggers
from skor_bridge.cli import app
from skor_bridge.settings import build_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
METRICS_PORT = 9187


# -- readers ----------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (keyword.upper(), rest.strip())
        for keyword, _, rest in (line.strip().partition(" ") for line in text.splitlines())
        if keyword
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def manifests() -> list[dict]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def one(kind: str, component: str | None = None) -> dict:
    found = [
        doc
        for doc in manifests()
        if doc["kind"] == kind
        and (
            component is None
            or doc["metadata"]["labels"].get("app.kubernetes.io/component") == component
        )
    ]
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
    return found[0]


def pod_specs() -> list[dict]:
    return [
        one("Deployment", "bridge")["spec"]["template"]["spec"],
        one("Job")["spec"]["template"]["spec"],
        one("Deployment", "relay")["spec"]["template"]["spec"],
    ]


def is_skor_image(image: str) -> bool:
    return image.rsplit("/", 1)[-1].split(":")[0] == "skor-bridge"


def cli_envvars() -> set[str]:
    """Every environment variable any command of the CLI reads."""
    names: set[str] = set()
    pending = [typer.main.get_command(app)]
    while pending:
        command = pending.pop()
        pending.extend(getattr(command, "commands", {}).values())
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names


def parse_command_line(args: list[str], env: dict[str, str], monkeypatch) -> dict:
    """Parse `skor-bridge ARGS` as the CLI would with `env` as the environment; returns the
    leaf command's parameters. Unknown commands or options, bad values, and required
    options neither given nor in `env` fail."""
    command = typer.main.get_command(app)
    path = ["skor-bridge"]
    rest = list(args)
    while hasattr(command, "commands"):
        assert rest, f"{' '.join(path)} needs a command"
        name = rest.pop(0)
        assert name in command.commands, f"{' '.join(path)} has no command {name!r}"
        command = command.commands[name]
        path.append(name)
    for name in cli_envvars():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    context = command.make_context(" ".join(path), rest)
    return dict(context.params)


def compose_command_lines() -> list[tuple[str, list[str], dict[str, str]]]:
    """(service, arguments, environment) of every compose service running skor-bridge."""
    found = []
    for name, service in compose()["services"].items():
        if is_skor_image(service.get("image", "")):
            command = service.get("command", ["run"])
            args = shlex.split(command) if isinstance(command, str) else command
            env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
            found.append((name, args, env))
    return found


def k8s_command_lines() -> list[tuple[str, list[str], dict[str, str]]]:
    """(container, arguments, environment) of every skor-bridge container; values taken
    from a Secret become a placeholder DSN, enough for parsing."""
    found = []
    for spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            if not is_skor_image(container["image"]):
                continue
            assert "command" not in container, "keep the image's ENTRYPOINT (skor-bridge)"
            env = {
                e["name"]: e.get("value", "postgresql://user@host/db")
                for e in container.get("env", [])
            }
            found.append((container["name"], container["args"], env))
    return found


def config_map_data() -> dict[str, str]:
    return one("ConfigMap")["data"]


# -- the image --------------------------------------------------------------------------------


def test_the_image_is_built_in_two_stages_and_runs_the_wheel_as_a_non_root_user():
    # Given the Dockerfile
    instructions = dockerfile()
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    final = final_stage()
    # Then a builder stage makes a wheel and the slim final stage installs only that wheel
    assert len(froms) >= 2 and re.search(r"\bAS builder$", froms[0], re.I)
    assert froms[-1] == "python:3.11-slim"
    assert any(
        k == "RUN" and "pip wheel" in a for k, a in instructions[: len(instructions) - len(final)]
    )
    installs = [a for k, a in final if k == "RUN" and "pip install" in a]
    assert installs and all(".whl" in a and "[" not in a for a in installs), installs
    assert any(k == "COPY" and a.startswith("--from=builder") for k, a in final)
    # And it runs as a numeric, non-root user
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0].isdigit()


def test_every_copy_source_exists_and_is_let_into_the_build_context():
    # Given the COPY instructions that read the build context (not another stage)
    sources = []
    for keyword, args in dockerfile():
        if keyword == "COPY" and not args.startswith("--from"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            sources += parts[:-1]
    assert sources
    # Then each exists
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} does not exist"
    # And .dockerignore lets in what the wheel needs, and keeps out what it must not
    for needed in (
        "pyproject.toml",
        "skor_bridge/__init__.py",
        "skor_bridge/py.typed",
        "skor_bridge/capture/triggers.py",
    ):
        assert not dockerignored(needed), f"{needed} is left out of the build context"
    for secret in (
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        ".env",
        "deploy/k8s/secret.yaml",
        "skor_bridge/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignored(secret), f"{secret} would be sent to the builder"


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        regex = fnmatch.translate(glob).replace(".*", "[^/]*")
        if glob.startswith("**/"):
            regex = fnmatch.translate(glob[3:]).replace(".*", "[^/]*")
            hit = any(re.fullmatch(regex, part) for part in parts)
        else:
            hit = any(re.fullmatch(regex, c) for c in candidates)
        if hit:
            ignored = not negate
    return ignored


def test_the_entrypoint_and_default_command_are_real_cli_commands(monkeypatch):
    # Given the image's ENTRYPOINT and CMD
    final = dict(final_stage())
    entrypoint, cmd = json.loads(final["ENTRYPOINT"]), json.loads(final["CMD"])
    # Then the entrypoint is the installed script and the command parses with the CLI
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert entrypoint == ["skor-bridge"] and "skor-bridge" in project["scripts"]
    parse_command_line(cmd, {}, monkeypatch)
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output


def test_the_healthcheck_calls_healthz_on_the_metrics_port_the_image_sets():
    # Given the final stage's ENV, EXPOSE and HEALTHCHECK
    final = final_stage()
    env = " ".join(a for k, a in final if k == "ENV")
    healthcheck = " ".join(a for k, a in final if k == "HEALTHCHECK")
    # Then all three name the same port, and the check uses Python, not curl
    assert re.search(rf"\bSKOR_METRICS_PORT={METRICS_PORT}\b", env)
    assert [a for k, a in final if k == "EXPOSE"] == [str(METRICS_PORT)]
    assert "/healthz" in healthcheck and "curl" not in healthcheck
    assert '"python"' in healthcheck
    ports = set(re.findall(r"127\.0\.0\.1:(\d+)", healthcheck))
    ports |= set(re.findall(r"'SKOR_METRICS_PORT', '(\d+)'", healthcheck))
    assert ports == {str(METRICS_PORT)}


def test_every_skor_variable_named_in_the_deploy_files_is_one_the_cli_reads():
    # Given every SKOR_* name in the Dockerfile, the compose file, the manifests and README
    files = [
        ROOT / "Dockerfile",
        DEPLOY / "docker-compose.yml",
        DEPLOY / "README.md",
        *K8S.glob("*.yaml"),
    ]
    named = {name for path in files for name in re.findall(r"\bSKOR_[A-Z0-9_]+", path.read_text())}
    # Then the CLI reads each of them
    assert {"SKOR_DSN", "SKOR_METRICS_PORT"} <= named
    assert named - cli_envvars() == set()


# -- docker compose ---------------------------------------------------------------------------


def test_compose_services_have_images_and_wait_for_healthy_dependencies():
    # Given the compose file
    services = compose()["services"]
    image_healthcheck = any(k == "HEALTHCHECK" for k, _ in final_stage())
    for name, service in services.items():
        # Then each service names an image (or builds one) and runs something
        assert service.get("image") or service.get("build"), name
        if not is_skor_image(service.get("image", "")):
            assert "image" in service, name
        # And each dependency condition can be met
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = rule["condition"]
            target = services[dependency]
            if condition == "service_healthy":
                has_check = "test" in (target.get("healthcheck") or {})
                assert has_check or (is_skor_image(target["image"]) and image_healthcheck), (
                    f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                )
            else:
                assert condition == "service_completed_successfully", condition
                assert target.get("restart", "no") == "no", f"{dependency} must run once"
        # And every bind-mounted file exists next to the compose file
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    # And the infrastructure is what the example promises
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["rabbitmq"]["image"].startswith("rabbitmq:")
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper


def test_compose_installs_the_triggers_once_then_bridges_to_all_three_outputs(monkeypatch):
    # Given the skor-bridge services of the compose file
    services = compose()["services"]
    lines = {name: (args, env) for name, args, env in compose_command_lines()}
    # Then a one-shot service installs a triggers.json that exists and parses
    args, env = lines["triggers"]
    assert args[:2] == ["triggers", "install"]
    params = parse_command_line(args, env, monkeypatch)
    mounted = {v.split(":")[1]: v.split(":")[0] for v in services["triggers"]["volumes"]}
    assert triggers.load_config(DEPLOY / mounted[str(params["config"])])
    # And the bridge delivers to the receiver, RabbitMQ and Kafka services
    args, env = lines["bridge"]
    params = parse_command_line(args, env, monkeypatch)
    assert args == ["run"]
    hosts = {
        "receiver": params["webhook"][0].split("//")[1].split(":")[0],
        "rabbitmq": params["amqp"].split("@")[1].split(":")[0],
        "kafka": params["kafka"].split(":")[0],
    }
    assert all(host == service and service in services for service, host in hosts.items()), hosts
    assert params["dsn"].split("@")[1].split(":")[0] == "postgres"
    depends = services["bridge"]["depends_on"]
    assert depends["triggers"]["condition"] == "service_completed_successfully"
    assert {"receiver", "rabbitmq", "kafka"} <= set(depends)
    # And the bridge's metrics port is published
    assert f"{METRICS_PORT}:{METRICS_PORT}" in services["bridge"]["ports"]


def test_the_compose_receiver_script_answers_webhooks_and_health_checks(tmp_path):
    # Given the receiver script running on a free port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path / "receiver.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(DEPLOY / "compose" / "receiver.py")],
        env={"PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                # When it is asked for /healthz and sent a Skor body
                assert urllib.request.urlopen(f"{url}/healthz", timeout=1).status == 200
                break
            except OSError:
                assert time.monotonic() < deadline, "receiver did not start"
                time.sleep(0.05)
        body = b'{"data": {"id": 1}, "table": "orders", "schema": "public", "op": "INSERT"}'
        request = urllib.request.Request(
            f"{url}/hooks/skor", data=body, headers={"webhook-id": "e1"}
        )
        # Then it answers 200 and logs one line for the event
        assert urllib.request.urlopen(request, timeout=2).status == 200
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    assert 'e1 INSERT public.orders {"id": 1}' in (tmp_path / "receiver.log").read_text()


# -- Kubernetes -------------------------------------------------------------------------------


def test_every_skor_bridge_command_line_in_compose_and_kubernetes_parses(monkeypatch):
    # Given every skor-bridge invocation, with its environment
    lines = compose_command_lines() + k8s_command_lines()
    assert {"triggers", "bridge", "skor-bridge", "install-triggers", "skor-relay"} <= {
        n for n, _, _ in lines
    }
    # Then the CLI accepts each, its options and its SKOR_* values
    for name, args, env in lines:
        try:
            parse_command_line(args, env, monkeypatch)
        except Exception as exc:
            pytest.fail(f"{name}: skor-bridge {' '.join(args)}: {exc}")


def test_the_deployment_runs_two_replicas_probed_and_scraped_on_the_metrics_port():
    # Given the Deployment
    deployment = one("Deployment", "bridge")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    # Then two replicas run, for active/standby failover
    assert deployment["spec"]["replicas"] == 2
    # And liveness and readiness probe /healthz and /readyz on the metrics port
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        port = probe["port"]
        assert (ports[port] if isinstance(port, str) else port) == METRICS_PORT
    assert env.get("SKOR_METRICS_PORT", str(METRICS_PORT)) == str(METRICS_PORT)
    # And Prometheus scrapes that port
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"
    # And a graceful stop (up to 30 s of draining) fits in the grace period
    assert template["spec"]["terminationGracePeriodSeconds"] > 30


def test_pods_run_as_non_root_with_resources_set():
    # Given the Deployment's and the Job's pods
    for spec in pod_specs():
        # Then each runs as non-root, without privilege escalation, with requests and limits
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"].get("runAsUser", 1) != 0
        for container in spec.get("initContainers", []) + spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]


def test_the_disruption_budget_selects_the_deployments_pods_and_leaves_one_running():
    # Given the Deployment and the PodDisruptionBudget
    deployment, budget = one("Deployment", "bridge"), one("PodDisruptionBudget")
    selector = budget["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    # Then the budget selects exactly the Deployment's pods
    assert selector.items() <= labels.items()
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    # And a drain may take one replica, never both
    assert budget["spec"]["minAvailable"] == deployment["spec"]["replicas"] - 1


def test_the_config_map_holds_a_loadable_skor_toml_and_triggers_json(tmp_path):
    # Given the ConfigMap's two files
    data = config_map_data()
    path = tmp_path / "skor.toml"
    path.write_text(data["skor.toml"])
    # Then skor.toml builds a Config with outputs (the DSN comes from the Secret)
    config = build_config({"dsn": "postgresql://skor@postgres/shop"}, path, {})
    assert {o.kind for o in config.outputs} >= {"webhook", "kafka"}
    # And with SKOR_AMQP from the Secret, the amqp output joins them
    secret = one("Secret")["stringData"]
    config = build_config({}, path, secret)
    assert {o.kind for o in config.outputs} == {"webhook", "kafka", "amqp"}
    # And triggers.json is valid Skor trigger configuration
    assert triggers.parse_config(json.loads(data["triggers.json"]))


def test_config_files_mounted_in_pods_are_the_ones_their_commands_read():
    # Given each pod and the ConfigMap
    keys = set(config_map_data())
    for spec in pod_specs():
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            files = set()
            for mount in container.get("volumeMounts", []):
                # Then every mount has a volume, and ConfigMap items exist in the ConfigMap
                volume = volumes[mount["name"]]
                if "configMap" in volume:
                    items = volume["configMap"]["items"]
                    assert {item["key"] for item in items} <= keys
                    files |= {f"{mount['mountPath']}/{item['path']}" for item in items}
            # And each file argument is one of the mounted files
            for arg in container["args"]:
                if arg.endswith((".toml", ".json")):
                    assert arg in files, f"{container['name']} reads {arg}, not mounted"


def test_secret_references_resolve_and_the_dsn_comes_from_the_secret():
    # Given the Secret and every secretKeyRef
    secret = one("Secret")
    for spec in pod_specs():
        for container in spec["containers"]:
            refs = {
                e["name"]: e["valueFrom"]["secretKeyRef"]
                for e in container["env"]
                if "valueFrom" in e
            }
            # Then each names that Secret and one of its keys, and SKOR_DSN is among them
            # (the relay reads no database)
            assert "SKOR_DSN" in refs or container["args"][0] == "relay"
            for ref in refs.values():
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"]


def test_the_kustomization_applies_every_manifest():
    # Given kustomization.yaml
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    # Then it lists each manifest of the directory, and only those
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


# -- relay workers ----------------------------------------------------------------------------


def test_relay_workers_read_the_topics_the_bridge_writes_and_deliver_to_webhooks(tmp_path):
    # Given the relay Deployment, the bridge's skor.toml and the relay's relay.toml
    from skor_bridge.relay.config import build_relay_config

    deployment = one("Deployment", "relay")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    data = config_map_data()
    (tmp_path / "skor.toml").write_text(data["skor.toml"])
    (tmp_path / "relay.toml").write_text(data["relay.toml"])
    bridge = build_config({"dsn": "postgresql://skor@postgres/shop"}, tmp_path / "skor.toml", {})
    relay = build_relay_config({}, tmp_path / "relay.toml", {})
    # Then the relay runs `relay` with that file
    assert container["args"] == ["relay", "--config", "/etc/skor/relay.toml"]
    # And it reads the bridge's Kafka cluster and the topics its template makes
    (kafka,) = [o.settings for o in bridge.outputs if o.kind == "kafka"]
    assert relay.bootstrap == kafka.bootstrap
    assert relay.reads(kafka.topic.format(schema="public", table="orders"))
    assert relay.dead_letter_topic and not relay.reads(relay.dead_letter_topic)
    # And its pods are stateless replicas, probed and scraped like the bridge's
    assert deployment["spec"]["replicas"] >= 2
    assert "volumeClaimTemplates" not in deployment["spec"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    # And a graceful stop (requests in flight, then commit) fits in the grace period
    assert template["spec"]["terminationGracePeriodSeconds"] > relay.revoke_timeout
    # And it selects only relay pods, not the bridge's (whose PDB expects two of them)
    bridge_labels = one("Deployment", "bridge")["spec"]["template"]["metadata"]["labels"]
    assert not deployment["spec"]["selector"]["matchLabels"].items() <= bridge_labels.items()
    assert not one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        template["metadata"]["labels"].items()
    )


def test_the_lag_metric_to_scale_relays_on_is_the_one_they_export():
    # Given the metric names a relay serves
    from prometheus_client import generate_latest

    from skor_bridge.relay.metrics import RelayMetrics

    metrics = RelayMetrics()
    metrics.partition_lag.labels("skor.public.orders", "0").set(3)
    served = generate_latest(metrics.registry).decode()
    # Then the lag the docs tell autoscalers to use is among them, per topic and partition
    assert 'skor_relay_lag_records{partition="0",topic="skor.public.orders"} 3.0' in served
    for doc in (ROOT / "README.md", DEPLOY / "README.md", K8S / "relay.yaml"):
        assert "skor_relay_lag_records" in doc.read_text(), doc
