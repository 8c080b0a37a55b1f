"""The deployment files in deploy/ stay true to the program: they are parsed here, never run.

Every ``GENPLANE_*`` variable they name is a setting; every genplane command line in them
(compose commands, systemd ``ExecStart=``, the commands in deploy/README.md) parses with the
real CLI; the API and worker processes share one database, Redis, bucket and secret key; stop
timeouts leave a worker its drain; and no secret value is written in them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from genplane.cli.main import app
from genplane.cli.processes import CHILD_STOP_MARGIN_SECONDS
from genplane.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_ENV_EXAMPLE = DEPLOY / ".env.example"
SYSTEMD_ENV_EXAMPLE = DEPLOY / "systemd" / "genplane.env.example"
API_UNIT = DEPLOY / "systemd" / "genplane-api.service"
WORKER_UNIT = DEPLOY / "systemd" / "genplane-worker@.service"

#: ``GENPLANE_*`` names deploy/ may use that are not settings. Keep it empty unless one is needed.
NOT_SETTINGS: frozenset[str] = frozenset()
#: What the API and worker processes of one deployment must agree on.
SHARED = (
    "GENPLANE_SECRET_KEY",
    "GENPLANE_DATABASE_URL",
    "GENPLANE_REDIS_URL",
    "GENPLANE_STORAGE_URL",
    "GENPLANE_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|TOKEN")
ASSIGNMENT = re.compile(r"(?<![{$])\b([A-Z][A-Z0-9_]*)[ \t]*[:=][ \t]*[\"']?([^\s\"'#]*)")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(\$\{[^}]*\}|[^@\s/]+)@")
MACHINE_OR_REGISTRY = re.compile(
    r"/home/|/Users/|/work/|[A-Za-z]:\\|docker\.io|ghcr\.io|quay\.io|gcr\.io|pypi\.org|index-url"
)


def deploy_files() -> list[Path]:
    # deploy/.env is the operator's own copy with the real values (ignored by git).
    files = [p for p in sorted(DEPLOY.rglob("*")) if p.is_file() and p.name != ".env"]
    expected = {COMPOSE_FILE, DOCKERFILE, COMPOSE_ENV_EXAMPLE, SYSTEMD_ENV_EXAMPLE, API_UNIT, WORKER_UNIT}
    assert expected <= set(files)
    return files


# -- the real command line, with every command's body replaced -------------------------------------


def parse_cli(args: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``genplane <args>`` with the real CLI and return (command path, its parameters).

    A fresh click command tree is built from the typer app and each command's callback
    replaced, so nothing runs; an unknown command or option, or a value out of range, raises
    click's UsageError (typer ships its own copy of click, hence the duck typing)."""
    cli = typer.main.get_command(app)

    def stub(command: Any, path: str) -> None:
        if hasattr(command, "commands"):  # a group
            for name, sub in command.commands.items():
                stub(sub, f"{path} {name}")
        else:
            command.callback = lambda **params: (path, params)

    stub(cli, "genplane")
    result = cli.main(list(args), prog_name="genplane", standalone_mode=False)
    assert isinstance(result, tuple), f"genplane {shlex.join(args)} ran nothing"
    return result


def usage_error(args: Sequence[str]) -> str:
    """The message the CLI refuses ``args`` with."""
    try:
        parse_cli(args)
    except typer.TyperException as exc:  # typer's own click raises its exceptions as these
        if exc.exit_code != 2:  # 2: click's UsageError and its kinds
            raise
        return exc.format_message()
    raise AssertionError(f"genplane {shlex.join(args)} was accepted")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serv"], "No such command"),
        (["serve", "--no-such-option"], "No such option"),
        (["serve", "--workers", "0"], "--workers"),
        (["worker", "--concurrency", "many"], "--concurrency"),
    ],
)
def test_the_parser_refuses_what_genplane_refuses(args: list[str], message: str) -> None:
    assert message in usage_error(args)


def test_the_parser_reads_options_without_running_anything() -> None:
    command, params = parse_cli(["serve", "--port", "9000", "--workers", "3"])
    assert command == "genplane serve" and params["port"] == 9000 and params["workers"] == 3
    assert parse_cli(["keys", "list"])[0] == "genplane keys list"


# -- compose ---------------------------------------------------------------------------------------

VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def env_file(path: Path) -> dict[str, str]:
    """An env file: blank lines, comments and NAME=value lines only."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        assert match, f"{path.name}:{number} is not NAME=value: {line!r}"
        values[match[1]] = match[2]
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of ``value`` with ``env`` as deploy/.env; a variable that is
    neither set nor given a default fails, as do bare ``$NAME`` references (write ``$$``)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name, operator, argument = match[1], match[2], match[3]
        assert name, f"{match[0]} in {value!r}: write ${{{match[4]}}}, or $${match[4]} for the container"
        if name in env and (env[name] or operator is None or not operator.startswith(":")):
            return env[name]
        assert operator is not None and operator.endswith("-"), (
            f"${{{name}}} in compose.yaml is not set by .env.example: {argument or 'no default'}"
        )
        return argument

    return VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def entrypoint() -> list[str]:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ENTRYPOINT")]
    assert len(lines) == 1
    return json.loads(lines[0].removeprefix("ENTRYPOINT"))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def genplane_services(compose: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each service that runs the genplane image, with its parsed command line."""
    found = {}
    for name, service in compose["services"].items():
        if "build" not in service and not str(service.get("image", "")).startswith("genplane"):
            continue
        assert "entrypoint" not in service, f"{name} must run the image's entrypoint (genplane)"
        command = service["command"]
        argv = [*entrypoint(), *(shlex.split(command) if isinstance(command, str) else command)]
        assert argv[0] == "genplane", name
        found[name] = parse_cli(argv[1:])
    return found


def roles(compose: dict[str, Any], path: str) -> list[str]:
    return [name for name, (command, _) in genplane_services(compose).items() if command == path]


def test_compose_runs_the_services_of_a_scaled_out_install(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "worker"} <= set(services)
    apis = roles(compose, "genplane serve")
    assert len(apis) >= 2, "at least two API processes"
    assert roles(compose, "genplane worker") == ["worker"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert set(genplane_services(compose)) == {*apis, "worker"}, "every genplane service is a role"


def test_compose_images_and_the_dockerfile_build_genplane(compose: dict[str, Any]) -> None:
    assert entrypoint() == ["genplane"]
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, flags=re.MULTILINE)
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image runs as a non-root user"
    assert "--no-cache-dir" in text
    builds = {json.dumps(compose["services"][name]["build"]) for name in genplane_services(compose)}
    assert len(builds) == 1, "one image for every role"
    build = json.loads(builds.pop())
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    for sources in re.findall(r"^COPY\s+(.+)\s+\S+$", text, flags=re.MULTILINE):
        for source in sources.split():
            assert (context / source).exists(), f"COPY {source}: not in the build context"


def test_every_compose_dependency_waits_for_health_or_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in genplane_services(compose):
        depends = services[name]["depends_on"]
        assert {"postgres", "redis", "minio-init"} <= set(depends), name
        for target, rule in depends.items():
            condition = rule["condition"]
            assert condition in ("service_healthy", "service_completed_successfully"), (name, target)
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on {target}: no healthcheck"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "minio"):
        assert services[name]["healthcheck"]["test"], name
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert any(v.split(":")[0] in compose["volumes"] for v in services["postgres"]["volumes"])


def test_api_processes_listen_where_their_healthcheck_and_ports_look(compose: dict[str, Any]) -> None:
    services = compose["services"]
    published = []
    for name in roles(compose, "genplane serve"):
        _, params = genplane_services(compose)[name]
        assert params["host"] == "0.0.0.0", f"{name} must listen beyond the container's loopback"
        port = params["port"]
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(services[name]["healthcheck"]["test"]), name
        for mapping in services[name]["ports"]:
            *host, target = str(mapping).split(":")
            assert int(target) == port, f"{name} publishes {mapping}, but listens on {port}"
            published.append(tuple(host))
        assert environment(services[name])["GENPLANE_RUN_WORKER"].lower() == "false", name
    assert len(published) == len(set(published)), "two API services publish the same host port"


def test_api_and_workers_share_one_deployment(compose: dict[str, Any]) -> None:
    envs = {name: environment(compose["services"][name]) for name in genplane_services(compose)}
    for key in SHARED:
        values = {name: env.get(key) for name, env in envs.items()}
        assert None not in values.values() and len(set(values.values())) == 1, (key, values)
    env = envs["worker"]
    secret = env["GENPLANE_SECRET_KEY"]
    assert re.fullmatch(r"\$\{GENPLANE_SECRET_KEY:\?[^}]+\}", secret), "required, without a default"
    assert env["GENPLANE_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert env["GENPLANE_REDIS_URL"].startswith("redis://")
    assert env["GENPLANE_STORAGE_URL"].startswith("s3://")


def test_compose_settings_load_with_the_example_values(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interpolated as compose would after ``cp .env.example .env``, every genplane service's
    environment loads into Settings, and stopping leaves a worker its drain."""
    resolved = interpolate(compose, env_file(COMPOSE_ENV_EXAMPLE))  # fails on a variable .env lacks
    bucket = None
    for name in genplane_services(compose):
        settings = load_settings(environment(resolved["services"][name]), monkeypatch)
        assert settings.database_url and settings.redis_url and settings.secret_key, name
        bucket = settings.storage_url.removeprefix("s3://").split("/")[0]
        grace = seconds(resolved["services"][name]["stop_grace_period"])
        assert grace > settings.worker_drain_seconds + CHILD_STOP_MARGIN_SECONDS, name
    init = " ".join(resolved["services"]["minio-init"]["command"])
    assert re.search(rf"mc mb [^&|;]*\S+/{bucket}\b", init), "minio-init creates the bucket genplane uses"


def load_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("GENPLANE_"):
                patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Settings(_env_file=None)  # type: ignore[call-arg]


def seconds(duration: str | int) -> float:
    """A compose or systemd duration: 90, 90s, 1m30s, 2min."""
    text = str(duration).strip()
    if text.isdigit():
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|min|ms|m|s)", text)
    assert parts and "".join(a + u for a, u in parts) == text.replace(" ", ""), f"duration {text!r}"
    unit = {"h": 3600, "min": 60, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(amount) * unit[u] for amount, u in parts)


# -- systemd ---------------------------------------------------------------------------------------


def unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (a key may repeat)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def exec_start(path: Path) -> tuple[str, dict[str, Any]]:
    (line,) = unit(path)["Service.ExecStart"]
    argv = shlex.split(line.lstrip("-@:+!"))
    assert argv[0].startswith("/") and argv[0].endswith("/bin/genplane"), argv[0]
    return parse_cli(argv[1:])


def test_systemd_units_run_the_real_commands() -> None:
    command, params = exec_start(API_UNIT)
    assert command == "genplane serve" and params["workers"] >= 2
    assert exec_start(WORKER_UNIT)[0] == "genplane worker"
    assert WORKER_UNIT.name.endswith("@.service"), "a template: genplane-worker@1, @2, ..."


def test_systemd_units_share_settings_user_and_hardening(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(env_file(SYSTEMD_ENV_EXAMPLE), monkeypatch)
    assert settings.run_worker is False, "the API unit only serves; the worker units run the jobs"
    api, worker = unit(API_UNIT), unit(WORKER_UNIT)
    for key in ("Service.EnvironmentFile", "Service.User", "Service.Group"):
        assert api[key] == worker[key] and len(api[key]) == 1, key
    assert api["Service.EnvironmentFile"][0].lstrip("-") == "/etc/genplane/genplane.env"
    assert api["Service.User"][0] not in ("root", "0")
    for entries, path in ((api, API_UNIT), (worker, WORKER_UNIT)):
        service = {key.removeprefix("Service."): values[-1] for key, values in entries.items()}
        assert service["Restart"] == "on-failure", path.name
        assert service["KillSignal"] == "SIGTERM", path.name
        stop = seconds(service["TimeoutStopSec"])
        assert stop > settings.worker_drain_seconds + CHILD_STOP_MARGIN_SECONDS, f"{path.name}: the drain"
        assert service["NoNewPrivileges"] in ("yes", "true"), path.name
        assert service["PrivateTmp"] in ("yes", "true"), path.name
        assert service["ProtectSystem"] == "strict", path.name
        writable = " ".join(entries["Service.ReadWritePaths"]).split()
        assert str(settings.data_dir) in writable, f"{path.name}: GENPLANE_DATA_DIR must be writable"
        assert entries["Install.WantedBy"], path.name


# -- every file ------------------------------------------------------------------------------------


def test_every_genplane_variable_is_a_setting() -> None:
    named = {
        name: path.relative_to(DEPLOY).as_posix()
        for path in deploy_files()
        for name in re.findall(r"\bGENPLANE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    settings = {f"GENPLANE_{field.upper()}" for field in Settings.model_fields}
    assert {name: where for name, where in named.items() if name not in settings | NOT_SETTINGS} == {}
    assert {n for n in SHARED if n.startswith("GENPLANE_")} <= set(named)


def readme_commands() -> Iterator[list[str]]:
    """The simple commands in deploy/README.md's shell blocks (split at &&, ||, | and ;)."""
    text = (DEPLOY / "README.md").read_text()
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            command: list[str] = []
            for word in [*shlex.split(line, comments=True), ";"]:
                if word in ("&&", "||", "|", ";"):
                    if command:
                        yield command
                    command = []
                else:
                    command.append(word)


def test_readme_commands_parse(compose: dict[str, Any]) -> None:
    services = genplane_services(compose)
    checked = 0
    for words in readme_commands():
        for i, word in enumerate(words):
            rest = words[i + 1 :]
            if word.endswith("/bin/genplane") or (word == "genplane" and i == 0):
                parse_cli(rest)
                checked += 1
            elif word == "run" and "compose" in words[:i]:
                args = [w for w in rest if not w.startswith("-")]
                if args and args[0] in services:
                    parse_cli(rest[rest.index(args[0]) + 1 :])
                    checked += 1
    assert checked >= 2, "deploy/README.md shows admin commands for compose and for systemd"


def test_no_secret_machine_path_or_registry_is_committed() -> None:
    for path in deploy_files():
        text = path.read_text()
        where = path.relative_to(DEPLOY).as_posix()
        for name, value in ASSIGNMENT.findall(text):
            if SECRET_NAME.search(name):
                assert is_placeholder(value), f"{where}: {name} has a literal value"
        for value in URL_PASSWORD.findall(text):
            assert is_placeholder(value), f"{where}: a URL with a literal password"
        assert not MACHINE_OR_REGISTRY.search(text), f"{where}: {MACHINE_OR_REGISTRY.search(text)}"


def is_placeholder(value: str) -> bool:
    """Empty, a ``${...}`` reference (``$$`` for the container's shell), or an obvious change-me."""
    return value == "" or value.startswith(("${", "$$")) or "change-me" in value.lower()
