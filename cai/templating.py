"""Stage templates: Jinja files in `prompts/templates/`, rendered sandboxed with `StrictUndefined`.

Only the template files are compiled. Everything a user supplies (red-team prompts, model outputs, principles)
enters as a variable and comes out verbatim: a prompt holding `{{ 7*7 }}` or `{% include %}` is just text.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cai.errors import UsageError
from cai.resources import data_dir


class TemplateError(UsageError):
    """A stage template is missing or needs a variable the caller did not give."""


@lru_cache(maxsize=8)
def _environment(folder: str) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(folder),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def default_template_dir() -> Path:
    return data_dir("prompts") / "templates"


def render(name: str, template_dir: str | Path | None = None, **variables: Any) -> str:
    """Render template `name` (e.g. `critique.j2`) with `variables`; surrounding whitespace is stripped."""
    env = _environment(str(template_dir or default_template_dir()))
    try:
        template = env.get_template(name)
    except TemplateNotFound:
        raise TemplateError(f"template {name!r} not found in {template_dir or default_template_dir()}") from None
    try:
        return template.render(**variables).strip()
    except Exception as e:  # StrictUndefined and sandbox violations surface here
        raise TemplateError(f"template {name!r}: {e}") from None
