"""The base of every cai config model: unknown keys and infinite or NaN numbers are errors, and each field's
docstring becomes its `--help` text (`cai/cli/options.py`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)
