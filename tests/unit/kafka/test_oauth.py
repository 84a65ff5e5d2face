"""OAUTHBEARER tokens from a file or a command: cached, refreshed on time, shared."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import orjson
import pytest
from kafka.errors import SaslAuthenticationFailedError

from detector.config import KafkaSettings
from detector.errors import ConfigError
from detector.kafka import clients
from detector.kafka.oauth import CommandSource, FileSource, TokenProvider, parse_extensions


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def jwt(exp: float) -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part({'exp': exp, 'sub': 'anomalyd'})}.sig"


def counting_command(tmp_path: Path, output: str) -> tuple[str, Path]:
    """A real command printing ``output`` and counting its runs in a file."""
    count = tmp_path / "runs"
    script = tmp_path / "token.py"
    script.write_text(
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(count)!r})\n"
        "p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1')\n"
        f"sys.stdout.write({output!r})\n"
    )
    return f"{sys.executable} {script}", count


def test_a_file_token_is_read_again_every_refresh_interval(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("first\n")
    clock = Clock()
    p = TokenProvider(FileSource(f), refresh_s=300, clock=clock)

    assert p.token() == "first"
    f.write_text("second\n")
    clock.now += 299
    assert p.token() == "first"  # cached
    clock.now += 2
    assert p.token() == "second"


def test_a_jwt_is_fetched_again_before_its_exp_claim(tmp_path: Path) -> None:
    clock = Clock()
    f = tmp_path / "token"
    f.write_text(jwt(exp=clock.now + 100))
    p = TokenProvider(FileSource(f), refresh_s=3600, clock=clock)
    first = p.token()

    f.write_text(jwt(exp=clock.now + 1000))
    clock.now += 79  # a fifth of the 100 s lifetime is kept in hand
    assert p.token() == first
    clock.now += 2
    assert p.token() != first


def test_a_command_printing_oauth_json_runs_once_per_refresh_for_every_client(
    tmp_path: Path,
) -> None:
    command, runs = counting_command(
        tmp_path, '{"access_token": "tok-1", "expires_in": 600, "token_type": "Bearer"}'
    )
    k = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_command=command,
        sasl_oauth_extensions="logicalCluster=lkc-1, identityPoolId=pool-2",
    )

    worker, trainer = clients.client_options(k), clients.client_options(k)

    provider = worker["sasl_oauth_token_provider"]
    assert provider is trainer["sasl_oauth_token_provider"]
    assert provider.token() == "tok-1"
    assert provider.extensions() == {"logicalCluster": "lkc-1", "identityPoolId": "pool-2"}
    assert runs.read_text() == "1"


def test_a_failing_token_command_stops_startup_with_its_error(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(
        "import sys\nsys.stderr.write('no credentials for anomalyd\\n')\nsys.exit(3)\n"
    )
    k = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_command=f"{sys.executable} {script}",
    )

    with pytest.raises(ConfigError) as err:
        clients.client_options(k)

    assert "exited 3: no credentials for anomalyd" in str(err.value)
    assert "ANOMALYD_KAFKA__SASL_OAUTH_TOKEN_COMMAND" in str(err.value)


def test_a_failed_refresh_keeps_a_token_that_has_not_expired(tmp_path: Path) -> None:
    clock = Clock()
    f = tmp_path / "token"
    f.write_text(jwt(exp=clock.now + 1000))
    p = TokenProvider(FileSource(f), refresh_s=60, clock=clock)
    good = p.token()

    f.unlink()
    clock.now += 61
    assert p.token() == good  # logged, kept
    clock.now += 1000
    with pytest.raises(SaslAuthenticationFailedError, match="cannot read"):
        p.token()


def test_a_command_that_prints_nothing_is_an_error() -> None:
    p = TokenProvider(CommandSource("true"), refresh_s=60)
    with pytest.raises(SaslAuthenticationFailedError, match="empty"):
        p.token()


def test_extensions_must_be_key_value_pairs() -> None:
    assert parse_extensions(None) == {}
    with pytest.raises(ValueError, match="'justakey' is not key=value"):
        parse_extensions("a=1,justakey")


def test_oauthbearer_needs_exactly_one_token_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of ANOMALYD_KAFKA__SASL_OAUTH_TOKEN_FILE"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER")
