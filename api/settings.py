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

    state_dir: Path = Path("sparse-nas-state")
    """The embedded default's home: its SQLite database and the trials' artifacts."""

    database_url: str | None = None
    """SQLAlchemy URL of the study database; None: a SQLite file in ``state_dir``."""

    artifact_dir: Path | None = None
    """Where trained weights are stored; None: ``state_dir/artifacts``."""

    ray_address: str | None = None
    """Ray cluster for jobs with ``backend: ray`` that name none (``"ray-head:6379"`` in
    docker-compose); None: such a job starts a private local Ray in its worker."""

    # --- the service -------------------------------------------------------------------

    host: str = "127.0.0.1"
    """Interface the API listens on. Any address but loopback requires ``api_token``."""

    port: int = 8000
    """TCP port of the API."""

    api_token: str | None = None
    """Bearer token the API requires (``Authorization: Bearer <token>``); None: no auth,
    allowed only on a loopback ``host``."""

    max_body_bytes: int = 1_048_576
    """Largest request body the API accepts (413 above it)."""

    heartbeat_interval_s: float = 5.0
    """How often a job worker stamps the heartbeat of the job it runs."""

    stale_after_s: float = 30.0
    """A running job whose heartbeat is older than this is taken over by another worker."""

    worker_poll_s: float = 1.0
    """How often an idle worker looks for a queued job."""

    def as_environment(self) -> dict[str, str]:
        """These settings as ``SPARSE_NAS_*`` variables, for a child process to read back.

        A field that is None is absent (so the child takes the default too); the caller
        must drop inherited ``SPARSE_NAS_*`` variables for that to hold.
        """
        prefix = self.model_config.get("env_prefix", "")
        return {
            f"{prefix}{name}".upper(): str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to ``state_dir/sparse-nas.db``."""
        if self.database_url:
            return self.database_url
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.state_dir / 'sparse-nas.db').resolve()}"

    def resolved_artifact_dir(self) -> Path:
        """The artifact directory, defaulting to ``state_dir/artifacts``."""
        return self.artifact_dir if self.artifact_dir is not None else self.state_dir / "artifacts"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
