"""Settings: environment (ANOMALYD_, nested with "__"), an optional TOML file, CLI flags.

Precedence, highest first: CLI flags (passed as init arguments), environment, the config
file (``--config`` or ``ANOMALYD_CONFIG_FILE``), defaults. Secrets are ``SecretStr`` (never
printed) and may come from files (``*_FILE`` settings, e.g. a mounted Kubernetes Secret).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "load_settings"]

_frozen = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(BaseModel):
    model_config = _frozen

    bootstrap_servers: str = "localhost:9092"
    client_id: str = "anomalyd"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_password_file: Path | None = None
    request_timeout_ms: int = Field(30_000, ge=1000)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL")
        if sasl and not self.sasl_mechanism:
            raise ValueError(
                f"kafka.security_protocol={self.security_protocol} needs "
                "kafka.sasl_mechanism (ANOMALYD_KAFKA__SASL_MECHANISM=PLAIN|SCRAM-SHA-256|"
                "SCRAM-SHA-512)"
            )
        if sasl and not self.sasl_username:
            raise ValueError("SASL needs kafka.sasl_username (ANOMALYD_KAFKA__SASL_USERNAME)")
        if sasl and not (self.sasl_password or self.sasl_password_file):
            raise ValueError(
                "SASL needs a password: set ANOMALYD_KAFKA__SASL_PASSWORD or "
                "ANOMALYD_KAFKA__SASL_PASSWORD_FILE"
            )
        for name in (
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "sasl_password_file",
            "ssl_password_file",
        ):
            p = getattr(self, name)
            if p is not None and not p.is_file():
                raise ValueError(f"kafka.{name}={p} does not exist or is not a file")
        return self

    def secret(self, name: Literal["sasl_password", "ssl_password"]) -> str | None:
        """The secret's value, from the setting or its ``*_file``; never logged."""
        direct: SecretStr | None = getattr(self, name)
        if direct is not None:
            return direct.get_secret_value()
        path: Path | None = getattr(self, f"{name}_file")
        return path.read_text().strip() if path else None


class TopicSettings(BaseModel):
    model_config = _frozen

    readings: str = "sensor-readings"
    alerts: str = "anomaly-alerts"
    dlq: str = "sensor-readings.dlq"
    state: str = "anomalyd-state"


class ConsumerSettings(BaseModel):
    model_config = _frozen

    group_id: str = "anomalyd"
    max_poll_records: int = Field(5000, ge=1)
    poll_timeout_ms: int = Field(100, ge=1)
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    session_timeout_ms: int = Field(45_000, ge=6000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"


class ModelSettings(BaseModel):
    model_config = _frozen

    dir: Path = Path("/var/lib/anomalyd/models")
    reload_interval_s: float = Field(10.0, gt=0)


class EngineSettings(BaseModel):
    model_config = _frozen

    device: str = "auto"
    max_streams: int = Field(1_000_000, ge=1)
    idle_ttl_s: float | None = Field(24 * 3600.0, gt=0)
    max_gap_s: float | None = Field(3600.0, gt=0)
    protect_state: bool | None = None  # None: as the model's artifact says
    threshold: float | None = None  # None: the calibrated threshold from training
    warmup: int | None = Field(None, ge=0)  # None: as the model's artifact says
    # Alerts as incidents (one open, one resolved event per deviation); False: one alert per
    # anomalous reading. None: as the model's artifact says (incidents, unless it says off).
    incidents: bool | None = None
    resolve_after: int | None = Field(None, ge=1)  # normal readings that resolve an incident
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None: one per core

    @model_validator(mode="after")
    def _device(self) -> EngineSettings:
        ok = self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        if not ok:
            raise ValueError(f"engine.device={self.device!r}: use auto, cpu, cuda or cuda:N")
        return self


class StateSettings(BaseModel):
    model_config = _frozen

    checkpoint: Literal["kafka", "dir", "off"] = "kafka"
    dir: Path | None = None  # when checkpoint=dir
    interval_s: float = Field(10.0, gt=0)


class HttpSettings(BaseModel):
    model_config = _frozen

    host: str = "0.0.0.0"
    port: int = Field(9400, ge=0, le=65535)


class LogSettings(BaseModel):
    model_config = _frozen

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    """All of anomalyd's settings. Example: ``ANOMALYD_KAFKA__BOOTSTRAP_SERVERS=k:9092``."""

    model_config = SettingsConfigDict(
        env_prefix="ANOMALYD_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    model: ModelSettings = ModelSettings()
    engine: EngineSettings = EngineSettings()
    state: StateSettings = StateSettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("ANOMALYD_CONFIG_FILE")
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from env, ``config_file`` and ``overrides`` (nested dicts from CLI flags).

    A validation error is re-raised as ConfigError naming the setting and the fix.
    """
    from pydantic import ValidationError

    from detector.errors import ConfigError

    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist")
        os.environ["ANOMALYD_CONFIG_FILE"] = str(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            env = "ANOMALYD_" + "__".join(str(p).upper() for p in e["loc"])
            where = f"{loc} ({env})" if loc else "settings"
            lines.append(f"{where}: {e['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
