"""What CI runs, read from the project's own files (standard library only).

    python3 .ci/toolchain.py main     # the README's first command (the main job)
    python3 .ci/toolchain.py test     # the README's second command (the tests)
    python3 .ci/toolchain.py floors   # pip constraints pinning each core dependency to its floor

The README opens with two ```bash blocks of one line each; CI runs them verbatim, so the
README and CI cannot drift apart. ``tests/test_toolchain.py`` checks the same rules.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)
_FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)$")


def readme_commands(text: str) -> dict[str, str]:
    """The README's set-up commands: its first two ``bash`` blocks, one line each."""
    blocks = [b.strip() for b in _BLOCK.findall(text)[:2]]
    if len(blocks) < 2:
        raise ValueError("README.md must open with two ```bash blocks: the main job, then the tests")
    for name, block in zip(("main job", "test"), blocks):
        if "\n" in block:
            raise ValueError(f"README.md: the {name} command must be one line, got:\n{block}")
    main, test = blocks
    if "python -m ppl.models." not in main:
        raise ValueError(
            f"README.md: the first command must run the main job (python -m ppl.models.*): {main}"
        )
    if "pytest" not in test:
        raise ValueError(f"README.md: the second command must run the tests (pytest): {test}")
    return {"main": main, "test": test}


def floors(pyproject: dict) -> dict[str, str]:
    """``{distribution: lowest version}`` of the core dependencies (each must be ``name>=version``)."""
    out = {}
    for requirement in pyproject["project"]["dependencies"]:
        match = _FLOOR.match(requirement.replace(" ", ""))
        if match is None:
            raise ValueError(f"pyproject.toml: core dependency {requirement!r} must be 'name>=version'")
        out[match.group(1)] = match.group(2)
    return out


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) == 2 else ""
    if what in ("main", "test"):
        print(readme_commands((ROOT / "README.md").read_text())[what])
    elif what == "floors":
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
        print("\n".join(f"{name}=={version}" for name, version in floors(pyproject).items()))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
