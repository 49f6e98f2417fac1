"""The invalid-Sweep corpus (tests/data/invalid-sweeps/) at `ladder validate`: every file is
refused with exit 1 and a problem line that names the field in its `# expect:` comment.

tests/k8s/test_invalid_corpus.py applies the same files to a real kube-apiserver with the
generated CRD, which must refuse them naming the same field (docs/security.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.core.spec import SpecError, load_sweep

CORPUS = Path(__file__).resolve().parents[1] / "data" / "invalid-sweeps"
EXPECT = "# expect: "


def expected_field(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(EXPECT), f"{path.name}: the first line must be '{EXPECT}<field>'"
    return first.removeprefix(EXPECT).strip()


FILES = sorted(CORPUS.glob("*.yaml"))


def test_the_corpus_is_large_and_well_formed() -> None:
    assert len(FILES) >= 50
    names = [path.stem for path in FILES]
    assert len(set(names)) == len(names)
    for path in FILES:
        assert expected_field(path)


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in FILES])
def test_ladder_validate_refuses_naming_the_field(path: Path) -> None:
    field = expected_field(path)
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "100000"})
    assert result.exit_code == 1, result.output
    assert "invalid Sweep" in result.output
    assert f"{field}: " in result.output, result.output[:2000]
    # The library names it as a problem path of its own (not just somewhere in a message).
    with pytest.raises(SpecError) as caught:
        load_sweep(path)
    assert field in [where for where, _ in caught.value.problems], caught.value.problems
    for secret in never_shown(path):  # hostile input, class 6: refusals redact
        assert secret not in result.output, result.output


def never_shown(path: Path) -> list[str]:
    """The values of a file's `# never-shown: <text>` lines: no message may quote them."""
    prefix = "# never-shown: "
    return [line.removeprefix(prefix).strip()
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.startswith(prefix)]


def test_user_text_in_messages_is_printed_verbatim(tmp_path: Path) -> None:
    """Messages quote what the user wrote; `rich` must print it, not read it as markup."""
    path = tmp_path / "markup.yaml"
    path.write_text("ladder: ['[red]m[/red]', '[red]m[/red]']\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "400"})
    assert result.exit_code == 1
    assert "model '[red]m[/red]' appears twice in the ladder" in result.output, result.output
