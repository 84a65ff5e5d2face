"""The errors anomalyd raises, all under one root.

::

    AnomalydError
    ├── ConfigError          a setting is missing or contradictory; names the setting
    ├── ArtifactError        a model artifact cannot be used; the running model keeps serving
    │   ├── ArtifactNotFound       no artifact / no CURRENT pointer where one was expected
    │   ├── ArtifactCorrupt        unreadable files, checksum mismatch, bad manifest
    │   └── ArtifactIncompatible   loads, but does not fit (features, architecture, format)
    ├── InputError           an input file for replay/training cannot be read as readings
    └── BrokerError          Kafka could not be reached or refused us after retries

Bad readings are *not* exceptions: the decoder returns ``BadReading`` values so that a
poison message never escapes into the worker loop.
"""

from __future__ import annotations


class AnomalydError(Exception):
    """Root of every error anomalyd raises on purpose."""


class ConfigError(AnomalydError):
    """A setting is missing, malformed or contradicts another."""


class ArtifactError(AnomalydError):
    """A model artifact cannot be used."""


class ArtifactNotFound(ArtifactError):
    """No artifact where one was expected."""


class ArtifactCorrupt(ArtifactError):
    """The artifact's files are unreadable or do not match their checksums."""


class ArtifactIncompatible(ArtifactError):
    """The artifact is intact but does not fit what is asked of it."""


class InputError(AnomalydError):
    """An input file cannot be read as readings."""


class BrokerError(AnomalydError):
    """Kafka could not be reached, or refused a request after retries."""
