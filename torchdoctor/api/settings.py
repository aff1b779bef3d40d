"""The service's settings, read from `TORCHDOCTOR_*` environment variables (pydantic-settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from torchdoctor.agent.home import torchdoctor_home


class ApiSettings(BaseSettings):
    """Everything the server, the store and the worker pool need to know."""

    model_config = SettingsConfigDict(env_prefix="TORCHDOCTOR_", extra="ignore")

    home: Path = Field(default_factory=torchdoctor_home, description="state folder (0700)")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file under home"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    audit_workers: int = Field(2, ge=1, description="audits run at once by one server process")
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="server-side folders that may be audited by path"
    )
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="largest request body")
    max_archive_files: int = Field(5000, ge=1)
    max_archive_bytes: int = Field(200 * 2**20, ge=1, description="uncompressed total")
    max_compression_ratio: float = Field(100.0, gt=1, description="uncompressed / compressed")
    rate_limit_per_minute: int = Field(120, ge=1, description="requests per API key")
    max_running_per_tenant: int = Field(4, ge=1, description="queued + running audits")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    lease_seconds: float = Field(
        15.0, gt=0, description="a running audit whose worker is silent this long is resumed"
    )
    sandbox: str | None = Field(None, description="sandbox backend for audits (default: auto)")

    @field_validator("allowed_roots", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """A comma-separated environment variable is a list (a JSON list works too)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @property
    def url(self) -> str:
        """The database URL: the configured one, else `home/api.sqlite`."""
        return self.database_url or f"sqlite:///{self.home / 'api.sqlite'}"

    @property
    def audits_dir(self) -> Path:
        return self.home / "audits"
