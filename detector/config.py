"""Settings: environment (ANOMALYD_, nested with "__"), an optional TOML file, CLI flags.

Precedence, highest first: CLI flags (passed as init arguments), environment, the config
file (``--config`` or ``ANOMALYD_CONFIG_FILE``), defaults. Secrets are ``SecretStr`` (never
printed) and may come from files (``*_FILE`` settings, e.g. a mounted Kubernetes Secret).
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from detector.sinks.settings import AlertmanagerSettings

__all__ = ["EngineSettings", "Settings", "SettingsSources", "config_file_in_use"]

# The --config file while load_settings builds Settings (else ANOMALYD_CONFIG_FILE is read).
config_file_in_use: ContextVar[str | None] = ContextVar("anomalyd_config_file", default=None)

# Every number finite: a NaN threshold compared false with every score and silenced alerting.
_frozen = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class KafkaSettings(BaseModel):
    model_config = _frozen

    bootstrap_servers: str = Field("localhost:9092", min_length=1)
    client_id: str = "anomalyd"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI", "AWS_MSK_IAM"]
        | None
    ) = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_password_file: Path | None = None
    ssl_check_hostname: bool = True
    ssl_crlfile: Path | None = None
    ssl_ciphers: str | None = None  # OpenSSL cipher list, e.g. "ECDHE+AESGCM"
    # OAUTHBEARER: the token is read from a file or printed by a command, again every
    # refresh_s and shortly before it expires (JWT "exp" or JSON "expires_in").
    sasl_oauth_token_file: Path | None = None
    sasl_oauth_token_command: str | None = None
    sasl_oauth_token_refresh_s: float = Field(300.0, gt=0)
    sasl_oauth_extensions: str | None = None  # "key=value,key=value"
    sasl_kerberos_service_name: str = "kafka"  # GSSAPI
    sasl_kerberos_domain_name: str | None = None  # GSSAPI; None: the broker's host name
    request_timeout_ms: int = Field(30_000, ge=1000)
    # exactly_once: how long a commit (flush, offsets and commit together) or an abort
    # waits for the brokers before the worker gives up and exits for its supervisor.
    transaction_wait_s: float = Field(120.0, ge=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL")
        if sasl and not self.sasl_mechanism:
            raise ValueError(
                f"kafka.security_protocol={self.security_protocol} needs "
                "kafka.sasl_mechanism (ANOMALYD_KAFKA__SASL_MECHANISM=PLAIN|SCRAM-SHA-256|"
                "SCRAM-SHA-512|OAUTHBEARER|GSSAPI|AWS_MSK_IAM)"
            )
        mech = self.sasl_mechanism if sasl else None
        if mech in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            if not self.sasl_username:
                raise ValueError(f"SASL {mech} needs ANOMALYD_KAFKA__SASL_USERNAME")
            if not (self.sasl_password or self.sasl_password_file):
                raise ValueError(
                    f"SASL {mech} needs a password: set ANOMALYD_KAFKA__SASL_PASSWORD or "
                    "ANOMALYD_KAFKA__SASL_PASSWORD_FILE"
                )
        if mech == "OAUTHBEARER" and (self.sasl_oauth_token_file is None) == (
            self.sasl_oauth_token_command is None
        ):
            raise ValueError(
                "SASL OAUTHBEARER needs exactly one of ANOMALYD_KAFKA__SASL_OAUTH_TOKEN_FILE "
                "and ANOMALYD_KAFKA__SASL_OAUTH_TOKEN_COMMAND"
            )
        if mech == "AWS_MSK_IAM" and self.security_protocol != "SASL_SSL":
            raise ValueError("SASL AWS_MSK_IAM needs ANOMALYD_KAFKA__SECURITY_PROTOCOL=SASL_SSL")
        for name in (
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
            "sasl_password_file",
            "ssl_password_file",
            "ssl_crlfile",
            "sasl_oauth_token_file",
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

    readings: str = Field("sensor-readings", min_length=1)
    alerts: str = Field("anomaly-alerts", min_length=1)
    dlq: str = Field("sensor-readings.dlq", min_length=1)
    state: str = Field("anomalyd-state", min_length=1)
    # Whether anomalyd creates missing output topics (alerts, dlq, state); false for
    # clusters where only operators create topics: then a missing one is an error.
    create: bool = True
    partitions: int = Field(1, ge=1)  # of the alerts and dlq topics anomalyd creates
    replication_factor: int | None = Field(None, ge=1)  # None: the broker's default


class ConsumerSettings(BaseModel):
    model_config = _frozen

    group_id: str = Field("anomalyd", min_length=1)
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
    idle_ttl_s: float | None = Field(24 * 3600.0, gt=0)  # "never": streams are kept
    max_gap_s: float | None = Field(3600.0, gt=0)  # "never": no gap restarts a stream
    protect_state: bool | None = None  # None: as the model's artifact says
    threshold: float | None = None  # None: the calibrated threshold from training
    warmup: int | None = Field(None, ge=0)  # None: as the model's artifact says
    # Alerts as incidents (one open, one resolved event per deviation); False: one alert per
    # anomalous reading. None: as the model's artifact says (incidents, unless it says off).
    incidents: bool | None = None
    resolve_after: int | None = Field(None, ge=1)  # normal readings that resolve an incident
    # Spreads of its reference a channel must stay away for an incident to be held open
    # (detector.core.incidents); 0: never held. None: as the model's artifact says.
    incident_hold: float | None = Field(None, ge=0)
    threads: int | None = Field(None, ge=1)  # torch CPU threads; None: one per core
    # Worker processes of `anomalyd run` in one consumer group; auto: one per usable core.
    processes: int | Literal["auto"] = 1

    @field_validator("idle_ttl_s", "max_gap_s", mode="before")
    @classmethod
    def _never(cls, v: Any) -> Any:
        # TOML has no null, and an environment variable no None: a word for "no limit"
        return None if isinstance(v, str) and v.strip().lower() in ("never", "none") else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v):
            return v
        raise ValueError("not a device: use auto, cpu, cuda or cuda:N")

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, v: Any) -> Any:
        text = str(v).strip().lower()
        if text == "auto":
            return "auto"
        if isinstance(v, bool) or not text.isdigit() or int(text) < 1:
            raise ValueError("not a number of processes: use a whole number >= 1, or auto")
        return int(text)


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

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v


class SettingsSources(BaseSettings):
    """Where settings are read: flags (init), the environment, then the TOML file in use
    (``--config``, else ``ANOMALYD_CONFIG_FILE``)."""

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
        path = config_file_in_use.get() or os.environ.get("ANOMALYD_CONFIG_FILE")
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)


class Settings(SettingsSources):
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
    alertmanager: AlertmanagerSettings = AlertmanagerSettings()
    # exactly_once: each batch's alerts, dead letters, state and offsets in one Kafka
    # transaction (docs/reliability.md); needs state.checkpoint=kafka or off.
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"

    @model_validator(mode="after")
    def _state_fits(self) -> Settings:  # here, so that `config check` finds it, not `run`
        if problem := self.state_conflict():
            raise ValueError(problem)
        return self

    def state_conflict(self) -> str | None:
        """Why the state settings cannot serve (also for copies made with ``model_copy``,
        which no validator sees), or None."""
        if self.state.checkpoint != "dir":
            return None
        if self.delivery == "exactly_once":
            return (
                "delivery=exactly_once needs state.checkpoint=kafka (or off): a state directory "
                "cannot be written in the Kafka transaction that commits the offsets"
            )
        if self.state.dir is None:
            return "state.checkpoint=dir needs state.dir (ANOMALYD_STATE__DIR=/path)"
        return None
