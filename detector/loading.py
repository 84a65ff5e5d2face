"""Settings loaded from the environment, a TOML file and flags, with where each came from;
every error one line naming where the value was set and what is allowed."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    SettingsConfigDict,
    SettingsError,
)

from detector.config import EngineSettings, Settings, SettingsSources, config_file_in_use
from detector.errors import ConfigError
from detector.origins import Origins

__all__ = ["load_engine_settings", "load_settings", "resolve_settings"]

_M = TypeVar("_M", bound=BaseSettings)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8 text
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _known(loc: Sequence[str]) -> list[str]:
    """The setting names allowed beside ``loc``'s last part."""
    model: Any = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return sorted(model.model_fields)


def _explain(exc: ValidationError, origins: Origins) -> str:
    """One line naming each bad setting where the operator set it, and what is allowed."""
    parts = []
    for e in exc.errors():
        loc = tuple(str(p) for p in e["loc"])
        dotted = ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:  # settings that do not fit together: the message names them
            parts.append(msg)
            continue
        if e["type"] == "extra_forbidden":
            msg = f"unknown setting; known here: {', '.join(_known(loc))}"
        value = e.get("input")
        secret = any("password" in p or "token" in p for p in loc)
        shown = f"={value!r}" if isinstance(value, str | int | float) and not secret else ""
        kind, where = origins.of(loc)
        if kind in ("env", "flag"):
            head = f"{where}{shown} ({dotted})"
        elif kind == "file":
            head = f"{dotted}{shown} in {where}"
        else:
            head = f"{dotted}{shown}"
        parts.append(f"{head}: {msg}")
    return "invalid configuration: " + "; ".join(parts)


def resolve_settings(
    config_file: Path | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
    **overrides: Any,
) -> tuple[Settings, Origins]:
    """:func:`load_settings`, plus where each value came from (for ``anomalyd config show``)."""
    return _resolve(Settings, config_file, flag_names, overrides)


class _EngineOnly(SettingsSources):
    """The engine group alone, from the same places: what an offline replay serves with,
    whatever the other groups say (a CA file only the worker's host has, say)."""

    model_config = SettingsConfigDict(
        env_prefix="ANOMALYD_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )
    engine: EngineSettings = EngineSettings()


def load_engine_settings(
    config_file: Path | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
    **engine: Any,
) -> EngineSettings:
    """The engine settings as :func:`load_settings` reads them, flags (``engine``) first;
    the other groups are not read."""
    got, _ = _resolve(_EngineOnly, config_file, flag_names, {"engine": engine})
    return got.engine


def _resolve(
    model: type[_M],
    config_file: Path | None,
    flag_names: Mapping[str, str] | None,
    overrides: Mapping[str, Any],
) -> tuple[_M, Origins]:
    if config_file is not None:
        if not config_file.is_file():
            what = "is a directory" if config_file.is_dir() else "does not exist"
            raise ConfigError(f"config file {config_file} (--config) {what}: fix the path")
    elif os.environ.get("ANOMALYD_CONFIG_FILE"):
        config_file = Path(os.environ["ANOMALYD_CONFIG_FILE"])
        if not config_file.is_file():
            what = "is a directory" if config_file.is_dir() else "does not exist"
            raise ConfigError(f"ANOMALYD_CONFIG_FILE={config_file} {what}: fix it or unset it")
    origins = Origins(
        config_file,
        _read_toml(config_file) if config_file is not None else {},
        dict(flag_names or {}),
        {k.lower(): v for k, v in os.environ.items()},
    )
    _refuse_misspelt_env(model)
    token = config_file_in_use.set(str(config_file) if config_file is not None else None)
    try:
        return model(**overrides), origins
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origins)) from None
    except SettingsError as exc:  # e.g. ANOMALYD_KAFKA='{not json'
        group = m.group(1) if (m := re.search(r'field "(\w+)"', str(exc))) else "kafka"
        var = f"ANOMALYD_{group.upper()}"
        raise ConfigError(
            f"{var} is not a JSON object of {group} settings: fix it, or set each value "
            f"alone ({var}__<NAME>)"
        ) from None
    finally:
        config_file_in_use.reset(token)


def _refuse_misspelt_env(model: type[BaseSettings]) -> None:
    """A setting's variable spelt with one underscore after its group
    (ANOMALYD_ENGINE_MAX_STREAMS), which pydantic-settings ignores without a word. Other
    ANOMALYD_* names are left alone: tools and tests have their own."""
    groups = {
        g: f.annotation.model_fields
        for g, f in model.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }
    for var in os.environ:
        if not var.upper().startswith("ANOMALYD_") or "__" in var:
            continue
        rest = var[len("ANOMALYD_") :].lower()
        for g, fields in groups.items():
            if rest.startswith(g + "_") and rest[len(g) + 1 :] in fields:
                right = f"ANOMALYD_{g.upper()}__{rest[len(g) + 1 :].upper()}"
                raise ConfigError(f"{var} is not read: a setting's variable is {right}")


def load_settings(
    config_file: Path | None = None,
    *,
    flag_names: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from env, ``config_file`` and ``overrides`` (nested dicts from CLI flags).

    ``flag_names`` maps a dotted setting to the flag that set it, for error messages. Every
    error (a missing or malformed file, a bad value) is raised as one-line ConfigError naming
    where the value was set and what is allowed.
    """
    return resolve_settings(config_file, flag_names=flag_names, **overrides)[0]
