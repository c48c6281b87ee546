"""Hardware profiles (``fleet_configs/profiles/*.yaml``): which targets a device class can run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet_protocol import Runtime
from model_compiler.exceptions import InputError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "fleet_configs" / "profiles"


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    runtimes: list[Runtime] = Field(min_length=1)
    precisions: list[Literal["fp32", "int8"]] = Field(min_length=1)
    memory_mb: float = Field(gt=0, description="RAM the model may use while running")
    flash_kb: float = Field(gt=0, description="Storage for one model bundle")

    def allows(self, runtime: Runtime, precision: str) -> bool:
        return runtime in self.runtimes and precision in self.precisions


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (``rpi4``) or by path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise InputError(f"unknown hardware profile {name_or_path!r} (known: {known})")
    try:
        return Profile.model_validate(yaml.safe_load(path.read_text()))
    except (ValidationError, yaml.YAMLError) as exc:
        raise InputError(f"profile {path} is invalid: {exc}") from None
