"""The README's commands, CI and the declared dependencies agree.

CI (``.ci/run``) reads its two commands from the README through ``.ci/toolchain.py``;
these tests pin the README's shape, the floors CI's oldest leg installs, and that the
README's test command installs every third-party package the code and tests import.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("ci_toolchain", ROOT / ".ci" / "toolchain.py")
toolchain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toolchain)

README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Our packages, and the benchmark scripts the CLI tests import from benchmarks/ (on sys.path).
FIRST_PARTY = {"ppl", "tests", "transforms", "models"} | {p.stem for p in (ROOT / "benchmarks").glob("*.py")}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])


def test_readme_opens_with_the_main_job_and_the_test_command() -> None:
    commands = toolchain.readme_commands(README)
    assert commands["main"].startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert commands["main"].endswith("python -m ppl.models.cone")
    assert commands["test"].startswith("python3 -m venv .venv && . .venv/bin/activate && pip install")
    assert commands["test"].endswith("python -m pytest -q")


def test_ci_runs_the_readme_commands_it_reads_verbatim() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    assert "main_cmd=$(python3 .ci/toolchain.py main)" in run
    assert "test_cmd=$(python3 .ci/toolchain.py test)" in run
    assert 'for cmd in "$main_cmd" "$test_cmd"; do' in run
    assert 'bash -c "$cmd"' in run
    # Both legs run them: the machine's python3 at the floors, the newest Python as python3.
    assert "leg oldest" in run and "leg newest" in run
    assert 'PIP_CONSTRAINT="$scratch/floors.txt"' in run


@pytest.mark.parametrize(
    ("readme", "message"),
    [
        ("no blocks", "must open with two ```bash blocks"),
        ("```bash\npython -m ppl.models.cone\n```\n```bash\na\nb\n```\n", "must be one line"),
        ("```bash\npython -m other\n```\n```bash\npytest\n```\n", "must run the main job"),
        ("```bash\npython -m ppl.models.cone\n```\n```bash\nmake\n```\n", "must run the tests"),
    ],
)
def test_a_malformed_readme_is_refused_with_the_rule_it_breaks(readme: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        toolchain.readme_commands(readme)


def test_core_floors_are_pinned_and_installed_versions_meet_them() -> None:
    floors = toolchain.floors(PYPROJECT)
    assert set(floors) == {"jax", "numpy", "numpyro", "optax", "equinox", "tqdm"}
    for name, floor in floors.items():
        installed = importlib.metadata.version(name)
        assert _version_tuple(installed) >= _version_tuple(floor), (name, installed, floor)
    with pytest.raises(ValueError, match="must be 'name>=version'"):
        toolchain.floors({"project": {"dependencies": ["jax"]}})


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def _third_party_imports(folders: list[str]) -> dict[str, str]:
    """``{top-level module: first file importing it}`` over the folders' Python files."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for module in (n.split(".")[0] for n in names):
                    if module not in sys.stdlib_module_names and module not in FIRST_PARTY:
                        found.setdefault(module, str(path.relative_to(ROOT)))
    return found


def test_the_readme_test_command_installs_everything_the_code_and_tests_import() -> None:
    extras = re.search(r'-e "\.\[([a-z,]+)\]"', toolchain.readme_commands(README)["test"]).group(1)
    project = PYPROJECT["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    for extra in extras.split(","):
        declared |= {_requirement_name(r) for r in project["optional-dependencies"][extra]}
    providers = importlib.metadata.packages_distributions()
    missing = {
        module: where
        for module, where in _third_party_imports(["ppl", "transforms", "models", "tests"]).items()
        if not declared & {_normalize(d) for d in providers.get(module, [module])}
    }
    assert not missing, f"imported but not installed by the README's test command: {missing}"
