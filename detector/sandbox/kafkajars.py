"""The Kafka broker's jars, downloaded from Maven Central by a pinned list, without Maven.

``kafka-<version>.lock`` (package data next to this module) lists every jar of the
broker's runtime classpath as ``group:artifact:version sha256``. :func:`fetch_jars` puts
them in a cache folder, downloading only what is missing and checking every sha256, so
the native broker needs neither ``mvn`` nor a resolver: only HTTPS to Maven Central (or
the mirror in ``ANOMALYD_MAVEN_REPO``).

Errors: a missing lock or an unreachable repository is :class:`BrokerUnavailable` (this
way to get a broker cannot work here; another may); a checksum mismatch is
:class:`BrokerError`, never retried around, because it means the bytes are not the ones
that were pinned.

This module is an edge: it reads the network and writes the cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from detector.errors import BrokerError
from detector.sandbox.broker import BrokerUnavailable

__all__ = [
    "MAVEN_CENTRAL",
    "LockedJar",
    "fetch_jars",
    "parse_lock",
    "read_lock",
]

log = logging.getLogger(__name__)

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
_DOWNLOAD_TIMEOUT_S = 60.0
_LINE = re.compile(r"^([\w.\-]+):([\w.\-]+):([\w.\-]+)\s+([0-9a-f]{64})$")


@dataclass(frozen=True)
class LockedJar:
    """One pinned jar: Maven coordinates and the sha256 of its bytes."""

    group: str
    artifact: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    @property
    def repo_path(self) -> str:
        """Where a Maven repository keeps it, relative to the repository's root."""
        return f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.filename}"

    def __str__(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"


def parse_lock(text: str, source: str = "lock") -> list[LockedJar]:
    """The jars listed in a lock file's text; ``#`` starts a comment.

    >>> jar = parse_lock("org.slf4j:slf4j-api:1.7.36 " + "ab" * 32)[0]
    >>> jar.repo_path
    'org/slf4j/slf4j-api/1.7.36/slf4j-api-1.7.36.jar'
    """
    jars: list[LockedJar] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(
                f"{source}:{number}: expected 'group:artifact:version <64 hex sha256>', "
                f"got {line!r}"
            )
        jars.append(LockedJar(*match.groups()))
    if not jars:
        raise ValueError(f"{source}: lists no jars")
    names = [jar.filename for jar in jars]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        # One folder holds the classpath: two jars of one name would overwrite each other.
        raise ValueError(f"{source}: lists {', '.join(dup)} more than once")
    return jars


def read_lock(kafka_version: str) -> list[LockedJar]:
    """The pinned jars of Kafka ``kafka_version``, from the lock shipped with anomalyd."""
    name = f"kafka-{kafka_version}.lock"
    lock = resources.files("detector.sandbox") / name
    if not lock.is_file():
        raise BrokerUnavailable(
            f"anomalyd ships no pinned jar list for Kafka {kafka_version} ({name}); "
            "use the Kafka version anomalyd was released with"
        )
    return parse_lock(lock.read_text(encoding="utf-8"), name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(jar: LockedJar, dest: Path, repo_url: str) -> None:
    url = f"{repo_url.rstrip('/')}/{jar.repo_path}"
    # A private name in the same folder, then a rename: readers only ever see a whole,
    # checked jar, and two processes fetching at once do not corrupt each other's.
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp,
            part.open("wb") as out,
        ):
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise BrokerUnavailable(
            f"cannot download {jar} from {url}: {reason} (no network? set "
            "ANOMALYD_MAVEN_REPO to a reachable Maven mirror)"
        ) from exc
    if digest.hexdigest() != jar.sha256:
        part.unlink(missing_ok=True)
        raise BrokerError(
            f"checksum mismatch for {jar} from {url}: sha256 {digest.hexdigest()}, "
            f"pinned {jar.sha256}; refusing to run it"
        )
    os.replace(part, dest)


def fetch_jars(jars: list[LockedJar], folder: Path, repo_url: str = MAVEN_CENTRAL) -> list[Path]:
    """The jars as files in ``folder``, downloading the missing ones from ``repo_url``.

    Files already there are re-hashed; one whose sha256 differs from the lock (a corrupt
    cache, a jar left by another tool) is downloaded again.
    """
    folder.mkdir(parents=True, exist_ok=True)
    missing = [jar for jar in jars if not _has(folder / jar.filename, jar.sha256)]
    if missing:
        log.info(
            "downloading %d of %d Kafka broker jars from %s into %s (once)",
            len(missing),
            len(jars),
            repo_url,
            folder,
        )
    for jar in missing:
        _download(jar, folder / jar.filename, repo_url)
    # The marker .ci/build-kafka-image.sh looks for before copying the folder.
    (folder / ".complete").touch()
    return [folder / jar.filename for jar in jars]


def _has(path: Path, sha256: str) -> bool:
    return path.is_file() and _sha256(path) == sha256
