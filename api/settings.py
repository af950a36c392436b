"""Service settings: the only place in sparse-nas that reads the environment.

Every variable is prefixed `SPARSE_NAS_` (e.g. `SPARSE_NAS_DATA_DIR`); lower layers
receive these values as explicit arguments.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings of the service and the command line."""

    model_config = SettingsConfigDict(env_prefix="SPARSE_NAS_", extra="ignore")

    data_dir: Path = Path("data")
    """Where datasets are read from (and downloaded to), in their original formats."""


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
