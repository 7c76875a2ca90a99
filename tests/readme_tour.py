"""The README's quick-start curl tour, as data: extracted, turned into one bash script, checked.

The tour is the fenced ```bash block that follows the `<!-- tour -->` comment in README.md.
Inside it, a *step* is a run of command lines (a line ending in a backslash continues the
command); the comment lines before it describe it, and the comment lines right after it show
its output. The output comment is an example: the check takes only its field names (every
`"name":` in it) and requires each of them in the JSON the step really printed. Values differ
from run to run (timestamps, ids, metrics), so they are not compared.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOUR_MARK = "<!-- tour -->"
STEP_MARK = "@@ia-continu-tour-step"
_FIELD = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)"\s*:')


class TourError(AssertionError):
    """The README's tour block is missing or malformed, or a step's output is not the
    documented one."""


@dataclass
class Step:
    number: int
    description: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    output_example: list[str] = field(default_factory=list)

    @property
    def script(self) -> str:
        return "\n".join(self.commands)

    @property
    def documented_fields(self) -> set[str]:
        return set(_FIELD.findall("\n".join(self.output_example)))


def extract_tour_block(markdown: str) -> str:
    """The text of the fenced bash block right after the tour mark (blank lines allowed
    between them, nothing else)."""
    start = markdown.find(TOUR_MARK)
    if start < 0:
        raise TourError(f"no {TOUR_MARK} mark in the README")
    if markdown.find(TOUR_MARK, start + len(TOUR_MARK)) >= 0:
        raise TourError(f"more than one {TOUR_MARK} mark in the README")
    rest = markdown[start + len(TOUR_MARK) :].lstrip("\n")
    if not rest.startswith("```bash\n"):
        raise TourError(f"{TOUR_MARK} must be followed by a ```bash block")
    body = rest[len("```bash\n") :]
    end = body.find("\n```")
    if end < 0:
        raise TourError("the tour's ```bash block is not closed")
    return body[:end]


def parse_steps(block: str) -> list[Step]:
    """Split the block into steps (see the module docstring)."""
    steps: list[Step] = []
    pending: list[str] = []  # comments seen since the last step's output ended
    current: Step | None = None
    continued = False
    for raw in block.splitlines():
        line = raw.rstrip()
        is_comment = line.lstrip().startswith("#") and not continued
        if continued or (line and not is_comment):
            if current is None or current.output_example or pending:
                current = Step(number=len(steps) + 1, description=pending)
                steps.append(current)
                pending = []
            current.commands.append(line)
            continued = line.endswith("\\")
        elif is_comment:
            text = line.lstrip()[1:].strip()
            if current is not None and not pending and (current.output_example or _is_output(text)):
                current.output_example.append(text)
            else:
                pending.append(text)
        else:  # a blank line ends a step's output example
            if current is not None and current.output_example:
                current = None
    if not steps:
        raise TourError("the tour block has no command")
    for step in steps:
        if not step.output_example:
            raise TourError(f"step {step.number} ({step.script!r}) shows no output example")
        for command in step.commands:
            if "curl " in command and "curl -fsS " not in command:
                raise TourError(
                    f"step {step.number}: use `curl -fsS` so that an HTTP error fails the tour: "
                    f"{command!r}"
                )
    return steps


def _is_output(comment: str) -> bool:
    return comment.startswith(("{", "["))


def build_script(steps: list[Step], base_url: str) -> str:
    """One bash script running every step in order (`set -euo pipefail`), a marker line
    before each so that its output can be told apart; `localhost:9000` becomes base_url."""
    host = base_url.removeprefix("http://")
    lines = ["set -euo pipefail"]
    for step in steps:
        lines.append(f"printf '\\n{STEP_MARK} %d\\n' {step.number}")
        lines.append(step.script.replace("localhost:9000", host))
    return "\n".join(lines) + "\n"


def split_outputs(stdout: str) -> dict[int, str]:
    """Each step's stdout, by step number (from the markers of build_script)."""
    outputs: dict[int, str] = {}
    number: int | None = None
    for line in stdout.splitlines():
        if line.startswith(STEP_MARK):
            number = int(line.split()[-1])
            outputs[number] = ""
        elif number is not None:
            outputs[number] += line + "\n"
    return outputs


def field_names(value: Any) -> set[str]:
    """Every key of every object in a JSON value, at any depth."""
    if isinstance(value, dict):
        names = set(value)
        for item in value.values():
            names |= field_names(item)
        return names
    if isinstance(value, list):
        names = set()
        for item in value:
            names |= field_names(item)
        return names
    return set()


def check_output(step: Step, output: str) -> Any:
    """The step's output parsed as JSON; TourError unless it holds every documented field."""
    try:
        parsed = json.loads(output)
    except json.JSONDecodeError as exc:
        raise TourError(
            f"step {step.number} ({step.script!r}) printed no JSON: {output!r}"
        ) from exc
    missing = step.documented_fields - field_names(parsed)
    if missing:
        raise TourError(
            f"step {step.number} ({step.script!r}): fields {sorted(missing)} are documented in "
            f"the README but absent from the answer {output.strip()!r}"
        )
    return parsed


def read_tour(readme: Path) -> list[Step]:
    return parse_steps(extract_tour_block(readme.read_text(encoding="utf-8")))
