"""The base of every cai config model: unknown keys and infinite or NaN numbers are errors, options that act only
beside another are refused without it, and each field's docstring becomes its `--help` text (`cai/cli/options.py`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    def needs(self, options: tuple[str, ...], condition: bool, requirement: str) -> None:
        """Refuse `options` given (in a file or on the command line) while `condition` does not hold: an option
        that would be silently ignored is a mistake the user should hear about."""
        given = [name for name in options if name in self.model_fields_set]
        if given and not condition:
            raise ValueError(f"{', '.join(given)} only act{'s' if len(given) == 1 else ''} with {requirement}")
