"""The extractor behind tests/integration/test_readme_tour.py: it finds the README's tour,
splits it into steps, and rejects broken blocks and answers missing a documented field."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.readme_tour import (
    TourError,
    build_script,
    check_output,
    extract_tour_block,
    parse_steps,
    read_tour,
    split_outputs,
)

ROOT = Path(__file__).resolve().parents[2]

BLOCK = """\
# liveness
curl -fsS localhost:9000/health
# {"status":"ok","version":"2.0.0"}

# two lines, one step
answer=$(curl -fsS -X POST localhost:9000/predict \\
  -d '{"features": [0.5, -1.2]}')
echo "$answer"
# {"prediction":0,
#  "prediction_id":"…"}
"""


def _readme(block: str) -> str:
    return f"# Title\n\ntext\n\n<!-- tour -->\n```bash\n{block}```\n\nafter\n"


def test_the_readme_has_a_tour_of_the_loop() -> None:
    steps = read_tour(ROOT / "README.md")
    scripts = "\n".join(step.script for step in steps)
    for route in ("/health", "/generate", "/retrain", "/predict", "/feedback", "/monitoring/run"):
        assert f"localhost:9000{route}" in scripts
    assert all(step.documented_fields for step in steps)


def test_steps_commands_and_documented_fields() -> None:
    steps = parse_steps(extract_tour_block(_readme(BLOCK)))
    assert [s.number for s in steps] == [1, 2]
    assert steps[0].description == ["liveness"]
    assert steps[0].documented_fields == {"status", "version"}
    assert len(steps[1].commands) == 3  # the continuation line stays with its command
    assert steps[1].documented_fields == {"prediction", "prediction_id"}


@pytest.mark.parametrize(
    ("markdown", "message"),
    [
        ("# no tour here\n", "no <!-- tour --> mark"),
        ("<!-- tour -->\n\ntext\n```bash\ncurl -fsS x\n```\n", "must be followed by"),
        ("<!-- tour -->\n```bash\ncurl -fsS x\n# {}\n", "not closed"),
        (_readme('curl -s localhost:9000/health\n# {"status":"ok"}\n'), "curl -fsS"),
        (_readme("curl -fsS localhost:9000/health\n"), "no output example"),
        (_readme(BLOCK) + _readme(BLOCK), "more than one"),
    ],
)
def test_broken_blocks_are_refused(markdown: str, message: str) -> None:
    with pytest.raises(TourError, match=message):
        parse_steps(extract_tour_block(markdown))


def test_an_answer_missing_a_documented_field_fails() -> None:
    step = parse_steps(extract_tour_block(_readme(BLOCK)))[0]
    assert check_output(step, '{"status":"ok","version":"2.0.0","timestamp":"t"}')["status"] == "ok"
    with pytest.raises(TourError, match="version"):
        check_output(step, '{"status":"ok"}')
    with pytest.raises(TourError, match="no JSON"):
        check_output(step, "<html>")


def test_nested_fields_count() -> None:
    step = parse_steps(extract_tour_block(_readme('curl -fsS x\n# {"drift":{"psi":1}}\n')))[0]
    assert check_output(step, '{"drift":{"feature1":{"psi":0.1}}}')
    with pytest.raises(TourError):
        check_output(step, '{"drift":null}')


def test_the_script_stops_at_the_first_failing_step(tmp_path: Path) -> None:
    block = 'echo \'{"a":1}\'\n# {"a":1}\n\nfalse\n# {"b":1}\n\necho \'{"c":1}\'\n# {"c":1}\n'
    steps = parse_steps(extract_tour_block(_readme(block)))
    script = build_script(steps, "http://127.0.0.1:1")
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert sorted(split_outputs(result.stdout)) == [1, 2]  # step 3 never ran


def test_only_the_base_url_is_replaced() -> None:
    steps = parse_steps(extract_tour_block(_readme(BLOCK)))
    script = build_script(steps, "http://127.0.0.1:45678")
    assert "localhost:9000" not in script
    assert "curl -fsS 127.0.0.1:45678/health" in script
    assert script.count("127.0.0.1:45678") == 2
