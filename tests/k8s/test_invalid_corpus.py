"""The invalid-Sweep corpus (tests/data/invalid-sweeps/) at `kubectl apply` against a real
kube-apiserver with the generated CRD: every file is refused, and the refusal names the same
field as `ladder validate` does (tests/unit/test_invalid_corpus.py).

The whole corpus goes to the apiserver in one `kubectl apply -f <folder>`; kubectl reports each
refusal with the file it came from, so the output is split per file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.k8s.conftest import ControlPlane

pytestmark = pytest.mark.k8s

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT / "tests" / "data" / "invalid-sweeps"
EXPECT = "# expect: "

# Files the apiserver cannot refuse, with the reason; `ladder validate` and the controller (which
# parses every Sweep with the same model and reports it in the Sweep's status) still do.
ACCEPTED_BY_THE_APISERVER: dict[str, str] = {
    "training-target-modules-number": (
        "targetModules is a string or a list of strings; a structural schema has one type per "
        "field, so the field is untyped (x-kubernetes-preserve-unknown-fields) and CEL cannot "
        "read untyped values. The length and item bounds are checked; the type is not."
    ),
}
# Files refused before they reach the CRD's schema, in words that do not name the field.
REFUSED_IN_OTHER_WORDS: dict[str, tuple[str, str]] = {
    "name-with-slash": (
        "may not contain '/'",
        "a name is part of the object's URL: kubectl refuses a '/' before sending anything",
    ),
}


def expected_field(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0].removeprefix(EXPECT).strip()


FILES = sorted(CORPUS.glob("*.yaml"))
_FILE_MENTION = re.compile(r'"(?P<file>[^"]*?invalid-sweeps/(?P<stem>[^"/]+)\.yaml)"')


def _attach_preambles(output: str) -> dict[str, str]:
    """kubectl's stderr, one chunk per corpus file it names; a multi-line refusal begins
    before the file is named, so the lines since the previous file's mention belong to it."""
    chunks: dict[str, str] = {}
    pending: list[str] = []
    for line in output.splitlines():
        pending.append(line)
        match = _FILE_MENTION.search(line)
        if match:
            chunks[match["stem"]] = chunks.get(match["stem"], "") + "\n".join(pending) + "\n"
            pending = []
    return chunks


@pytest.fixture(scope="module")
def apply_output(control_plane: ControlPlane) -> tuple[str, dict[str, str], str]:
    """(namespace, stderr per corpus file, stdout) of one `kubectl apply` of the corpus."""
    control_plane.install_crds(REPO_ROOT / "k8s" / "crd")
    namespace = control_plane.create_namespace("ladder-invalid")
    proc = control_plane.kubectl("-n", namespace, "apply", "-f", str(CORPUS), timeout=110)
    assert proc.returncode != 0, proc.stdout
    return namespace, _attach_preambles(proc.stderr), proc.stdout


def test_the_exclusions_are_corpus_files() -> None:
    stems = {path.stem for path in FILES}
    assert set(ACCEPTED_BY_THE_APISERVER) <= stems
    assert set(REFUSED_IN_OTHER_WORDS) <= stems


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem) for p in FILES if p.stem not in ACCEPTED_BY_THE_APISERVER
])
def test_apiserver_refuses_naming_the_field(
    apply_output: tuple[str, dict[str, str], str], path: Path
) -> None:
    _, refusals, stdout = apply_output
    assert path.stem in refusals, f"{path.name} was not refused:\n{stdout}"
    message = refusals[path.stem]
    if path.stem in REFUSED_IN_OTHER_WORDS:
        words, _ = REFUSED_IN_OTHER_WORDS[path.stem]
        assert words in message, message
    else:
        assert expected_field(path) in message, message


@pytest.mark.parametrize("stem", [pytest.param(s, id=s) for s in ACCEPTED_BY_THE_APISERVER])
def test_known_gaps_are_still_gaps(
    control_plane: ControlPlane, apply_output: tuple[str, dict[str, str], str], stem: str
) -> None:
    """A gap that closes (the CRD learns to refuse the file) fails here: move it back."""
    namespace, refusals, _ = apply_output
    assert stem not in refusals, refusals.get(stem)
    stored = control_plane.kubectl("-n", namespace, "get", "sweep", stem, "-o", "name")
    assert stored.returncode == 0, stored.stderr
