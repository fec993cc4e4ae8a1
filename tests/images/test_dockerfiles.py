"""The three Dockerfiles (operator, trainer, adapter agent) agree with pyproject.toml, constraints.txt and the chart.

Docker cannot build here (no engine), so these tests check what the files say: each
image installs its role's extra under constraints.txt, every explicit `pkg==x` equals the
pyproject pin, the Python in the image satisfies requires-python, the final stage runs
as a numeric non-root user, and the chart's default images name these three images.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import Dockerfile, parse, pip_installs
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
CHART = REPO / "helm" / "kubetune"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# image -> (Dockerfile, the extra it installs, entry module)
ROLES = {
    "operator": ("operator.Dockerfile", "operator"),
    "trainer": ("trainer.Dockerfile", "train"),
    "agent": ("agent.Dockerfile", "agent"),
}
EXTRA = re.compile(r"^\.\[([\w,-]+)\]$")


def pyproject_pins() -> dict[str, str]:
    """Every `name==version` in pyproject's dependencies and extras."""
    project = PYPROJECT["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    pins: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator == "==":
            name = canonicalize_name(req.name)
            assert pins.setdefault(name, specs[0].version) == specs[0].version, name
    return pins


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            pins[canonicalize_name(req.name)] = spec.version
    return pins


@pytest.fixture(params=sorted(ROLES), ids=sorted(ROLES))
def role(request: pytest.FixtureRequest) -> str:
    return request.param


def dockerfile(role: str) -> Dockerfile:
    return parse(IMAGES / ROLES[role][0])


def test_constraints_agree_with_pyproject_pins() -> None:
    """`-c constraints.txt` in the images must not move a package pyproject pins."""
    constraints = constraint_pins()
    pins = pyproject_pins()
    assert {name: constraints.get(name) for name in pins} == pins


def test_installs_only_its_roles_extra_under_constraints(role: str) -> None:
    installs = pip_installs(dockerfile(role))
    extras_installed = []
    known = set(PYPROJECT["project"]["optional-dependencies"])
    for install in installs:
        for token in install.requirements:
            match = EXTRA.match(token)
            if not match:
                continue
            extras = match[1].split(",")
            assert set(extras) <= known, f"unknown extra in {token}"
            assert install.options.get("-c") == "constraints.txt", token
            extras_installed += extras
    assert extras_installed == [ROLES[role][1]]


def test_explicit_pins_equal_pyproject(role: str) -> None:
    pins = pyproject_pins()
    explicit = [Requirement(t) for i in pip_installs(dockerfile(role)) for t in i.requirements
                if not EXTRA.match(t)]
    for req in explicit:
        (spec,) = req.specifier
        assert spec.operator == "==", f"{req} is not pinned"
        assert pins[canonicalize_name(req.name)] == spec.version, str(req)


def test_gpu_images_take_torch_from_the_cuda_index() -> None:
    for role in ("trainer",):
        df = dockerfile(role)
        torch = [i for i in pip_installs(df)
                 if any(r.startswith("torch==") for r in i.requirements)]
        assert len(torch) == 1, role
        index = torch[0].options.get("--index-url", "")
        assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", index), index
        base = df.base_image(df.final)
        assert base.startswith("nvidia/cuda:") and "runtime" in base, base
        cuda = re.search(r":(\d+)\.(\d+)", base)
        assert index.endswith(f"cu{cuda[1]}{cuda[2]}"), "torch wheels built for another CUDA"


def test_python_satisfies_requires_python(role: str) -> None:
    df = dockerfile(role)
    text = " ".join([df.base_image(df.final)] + [r for s in df.stages for r in s.all("RUN")])
    versions = set(re.findall(r"python:?(3\.\d+)", text))
    assert versions, "no Python version named"
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for version in versions:
        assert Version(version) in requires, version


def test_final_stage_runs_as_numeric_non_root(role: str) -> None:
    users = dockerfile(role).final.all("USER")
    assert users, "final stage sets no USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER {users[-1]!r} is not numeric (runAsNonRoot cannot verify names)"
    assert int(match[1]) != 0 and (match[2] is None or int(match[2]) != 0)


def test_operator_uid_matches_chart() -> None:
    uid, _, gid = dockerfile("operator").final.all("USER")[-1].partition(":")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid)


def test_copied_sources_exist(role: str) -> None:
    for stage in dockerfile(role).stages:
        for args in stage.all("COPY"):
            if args.startswith("--from"):
                continue
            *sources, _dest = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def image_label(role: str) -> str:
    labels = " ".join(dockerfile(role).final.all("LABEL"))
    name = re.search(r'dev\.kubetune\.image="([^"]+)"', labels)[1]
    version = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', labels)[1]
    return f"{name}:{version}"


def test_chart_defaults_point_to_these_images() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = PYPROJECT["project"]["version"]
    assert chart["appVersion"] == version
    for role in ROLES:
        assert image_label(role).endswith(f":{version}"), role
    operator = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
    assert operator == image_label("operator")
    assert values["config"]["images"]["trainer"] == image_label("trainer")
    assert values["config"]["images"]["agent"] == image_label("agent")


def test_agent_image_carries_no_torch() -> None:
    """The agent only downloads, verifies and calls vLLM's API: no torch in its extra."""
    names = {canonicalize_name(Requirement(r).name)
             for r in PYPROJECT["project"]["optional-dependencies"]["agent"]}
    assert not names & {"torch", "transformers", "peft", "bitsandbytes"}
    assert "nvidia/cuda" not in dockerfile("agent").base_image(dockerfile("agent").final)
