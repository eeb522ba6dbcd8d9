"""Prompts live in files under `pipelines/prompts/` (one per task); their hash goes with every output.

A prompt file is plain text with an optional front section:

    system: You are a precise visual describer.
    ---
    Describe the image in one dense paragraph ... {context}

Placeholders in braces are filled by `Prompt.render(**values)`; a missing value is an error,
not an empty string. The sha256 covers the whole file text, so any edit changes it.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "pipeline_files" / "prompts"  # -> pipelines/prompts
TASKS = ("dense_description", "instruction", "dynamics", "request", "narrative", "refinement", "answer", "seed_answer")


class PromptError(ValueError):
    pass


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    template: str
    sha256: str

    @property
    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.template) if f]

    def render(self, **values: object) -> str:
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise PromptError(f"prompt {self.name!r} needs {', '.join(missing)}")
        return self.template.format(**values)


def parse_prompt(name: str, text: str) -> Prompt:
    system = ""
    body = text
    head, sep, rest = text.partition("\n---\n")
    if sep and re.match(r"^system:", head.strip()):
        system = head.strip()[len("system:") :].strip()
        body = rest
    return Prompt(name=name, system=system, template=body.strip(), sha256=hashlib.sha256(text.encode()).hexdigest())


def load_prompt(name_or_path: str, directory: Path | None = None) -> Prompt:
    """A task name (`dense_description`) from pipelines/prompts, or a path to a prompt file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = (directory or PROMPTS_DIR) / f"{name_or_path}.txt"
    if not path.is_file():
        raise PromptError(f"prompt file not found: {path}")
    return parse_prompt(path.stem, path.read_text())
