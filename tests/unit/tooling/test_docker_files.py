"""Checks on docker/ that need no Docker engine: what the images copy exists in the
repository and is not excluded from the build context, what they run exists and works on
this machine, and what they install matches pyproject.toml without touching torch."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
from torch.distributed.run import parse_args as parse_torchrun_args

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "docker"
IMAGES = ("gpu", "cpu")
# Not "gpu": tests/conftest.py skips tests whose keywords include "gpu" when CUDA is missing.
IMAGE_IDS = [f"Dockerfile.{name}" for name in IMAGES]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in (DOCKER / f"Dockerfile.{name}").read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, f"Dockerfile.{name} ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _args(name: str) -> dict[str, str]:
    found = {}
    for instr, rest in _instructions(name):
        if instr == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            found[key] = value.strip('"')
    return found


def _exec_form(name: str, instr: str) -> list[str]:
    values = [rest for i, rest in _instructions(name) if i == instr]
    assert len(values) == 1, f"Dockerfile.{name} needs exactly one {instr}, has {len(values)}"
    assert values[0].startswith("["), (
        f"{instr} of Dockerfile.{name} should use the exec (JSON) form"
    )
    return json.loads(values[0])


def _copies(name: str) -> list[tuple[list[str], str]]:
    copies = []
    for instr, rest in _instructions(name):
        if instr in ("COPY", "ADD"):
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            copies.append((parts[:-1], parts[-1]))
    return copies


def _env(name: str) -> dict[str, str]:
    env = {}
    for instr, rest in _instructions(name):
        if instr == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


_PIP_OPTIONS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "-r", "-c"}


def _requirements(words: list[str]) -> set[str]:
    """The requirement specifiers of a ``pip install`` (options and their values dropped)."""
    found, skip = set(), False
    for w in words:
        if skip:
            skip = False
        elif w in _PIP_OPTIONS_WITH_VALUE:
            skip = True
        elif not w.startswith("-") and w not in (".", "${EXTRAS}"):
            found.add(w)
    return found


def _pip_installs(name: str) -> list[list[str]]:
    commands = []
    for instr, rest in _instructions(name):
        if instr == "RUN":
            lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words: list[str] = []
            for token in [*lexer, ";"]:
                if token in ("&&", "||", ";"):
                    if words[:2] == ["pip", "install"]:
                        commands.append(words[2:])
                    words = []
                else:
                    words.append(token)
    return commands


def _ignore_patterns(name: str) -> list[tuple[bool, re.Pattern]]:
    """Docker's .dockerignore rules as (is_exception, regex over context-relative paths)."""
    rules = []
    for line in (DOCKER / f"Dockerfile.{name}.dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        rules.append((negate, re.compile(regex + "$")))
    return rules


def _ignored(rel_path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    # A path is excluded when the last rule matching it or one of its parent directories excludes it.
    parts = rel_path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            verdict = not negate
    return verdict


@pytest.mark.parametrize("name", IMAGES, ids=IMAGE_IDS)
def test_copy_sources_exist_and_reach_the_build_context(name):
    rules = _ignore_patterns(name)
    copies = _copies(name)
    assert copies, f"Dockerfile.{name} copies nothing"
    for sources, _ in copies:
        for src in sources:
            path = REPO / src
            assert path.exists(), f"Dockerfile.{name} copies {src}, which is not in the repository"
            assert not _ignored(src, rules), f"{src} is excluded by Dockerfile.{name}.dockerignore"
            files = (
                [path]
                if path.is_file()
                else [p for p in path.rglob("*") if p.suffix in (".py", ".sh")]
            )
            for f in files:
                rel = f.relative_to(REPO).as_posix()
                if "__pycache__" not in rel:
                    assert not _ignored(rel, rules), (
                        f"{rel} is excluded by Dockerfile.{name}.dockerignore"
                    )


@pytest.mark.parametrize("name", IMAGES, ids=IMAGE_IDS)
def test_package_build_inputs_are_copied_before_the_install(name):
    pyproject = _pyproject()
    copied = [src for sources, _ in _copies(name)[:2] for src in sources]
    assert "pyproject.toml" in copied
    assert pyproject["project"]["readme"] in copied  # setuptools reads it when building the package
    assert "distengine" in copied


@pytest.mark.parametrize("name", IMAGES, ids=IMAGE_IDS)
def test_install_keeps_torch_and_matches_pyproject_dependencies(name):
    declared = _pyproject()["project"]["dependencies"]
    non_torch = {d.replace(" ", "") for d in declared if not re.match(r"torch\b", d)}
    installs = _pip_installs(name)
    package_installs = [words for words in installs if "." in words]
    assert package_installs, f"Dockerfile.{name} never installs the package"
    for words in package_installs:
        assert "--no-deps" in words, (
            f"Dockerfile.{name} installs the package without --no-deps: {words}"
        )
    listed = set().union(*(_requirements(words) for words in installs))
    torch_installs = {w for w in listed if re.match(r"torch\b", w)}
    assert listed - torch_installs == non_torch
    if name == "gpu":
        assert not torch_installs, "the GPU image must keep the base image's CUDA build of torch"


def test_cpu_image_torch_matches_the_ci_pin():
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "requirements-ci.txt").read_text().splitlines()
        if "==" in line
    )
    version = _args("cpu")["TORCH_VERSION"]
    assert version == pins["torch"]
    installs = [words for words in _pip_installs("cpu") if "torch==${TORCH_VERSION}" in words]
    assert installs and installs[0][-2:] == ["--index-url", "https://download.pytorch.org/whl/cpu"]


def test_base_images():
    gpu_from = [rest for instr, rest in _instructions("gpu") if instr == "FROM"]
    assert gpu_from == ["${BASE_IMAGE}"]
    assert re.fullmatch(
        r"pytorch/pytorch:2\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", _args("gpu")["BASE_IMAGE"]
    )
    assert [rest for instr, rest in _instructions("cpu") if instr == "FROM"] == ["python:3.11-slim"]


def test_dockerignore_files_are_identical():
    texts = {(DOCKER / f"Dockerfile.{name}.dockerignore").read_text() for name in IMAGES}
    assert len(texts) == 1


def test_gpu_entrypoint_is_torchrun_and_its_default_command_parses():
    assert _exec_form("gpu", "ENTRYPOINT") == ["torchrun"]
    result = subprocess.run(["torchrun", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    args = parse_torchrun_args(_exec_form("gpu", "CMD"))
    assert args.standalone
    assert (REPO / args.training_script).is_file()


def test_gpu_image_forwards_preemption_signals():
    names = _env("gpu")["PET_SIGNALS_TO_HANDLE"].split(",")
    assert {"SIGTERM", "SIGUSR1"} <= set(names)
    for n in names:
        assert isinstance(getattr(signal, n), signal.Signals)


def test_cpu_entrypoint_script_is_copied_executable_and_runs():
    entry = _exec_form("cpu", "ENTRYPOINT")
    assert entry[0] == "bash"
    script = REPO / entry[1]
    assert script.is_file() and os.access(script, os.X_OK)
    assert entry[1].split("/")[0] in {src for sources, _ in _copies("cpu") for src in sources}
    cmd = _exec_form("cpu", "CMD")
    assert int(cmd[0]) >= 1 and (REPO / cmd[1]).is_file()
    # Without a script the launcher prints its usage and exits 2 (checks the script runs here).
    result = subprocess.run(
        ["bash", str(script), cmd[0]], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "usage" in result.stderr


@pytest.mark.parametrize("name", IMAGES, ids=IMAGE_IDS)
def test_launcher_scripts_are_executable(name):
    copied = {src for sources, _ in _copies(name) for src in sources}
    assert "launchers" in copied
    for script in (REPO / "launchers").glob("*.sh"):
        if script.name != "common.sh":  # sourced, never run
            assert os.access(script, os.X_OK), f"{script.name} is not executable"
