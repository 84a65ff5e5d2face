"""The SASL and TLS part of kafka-python's options, from :class:`KafkaSettings`.

:func:`security_options` is called by :func:`detector.kafka.clients.client_options` only,
so the worker, the trainer and the simulator authenticate alike. Secrets go to the
client and are never logged. Problems that retrying cannot fix (a missing optional
package, a token command that fails, a cipher list OpenSSL rejects) are ConfigError.
"""

from __future__ import annotations

import importlib.util
import ssl
import threading
from typing import Any

from kafka.errors import SaslAuthenticationFailedError

from detector.config import KafkaSettings
from detector.errors import ConfigError
from detector.kafka.oauth import CommandSource, FileSource, TokenProvider, parse_extensions

__all__ = ["security_options", "ssl_context", "token_provider"]

_PASSWORD_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# What the optional mechanisms need beyond kafka-python, and how to get it.
_NEEDS = {
    "GSSAPI": ("gssapi", "pip install gssapi (it builds against the system's libkrb5)"),
    "AWS_MSK_IAM": ("botocore", "pip install botocore"),
}

_providers: dict[tuple[Any, ...], TokenProvider] = {}
_providers_lock = threading.Lock()


def security_options(k: KafkaSettings) -> dict[str, Any]:
    """sasl_* options for SASL_* protocols, ssl_* options for SSL and SASL_SSL."""
    opts: dict[str, Any] = {}
    if k.security_protocol.startswith("SASL"):
        opts |= _sasl_options(k)
    if k.security_protocol in ("SSL", "SASL_SSL"):
        opts |= _ssl_options(k)
    return opts


def _sasl_options(k: KafkaSettings) -> dict[str, Any]:
    mech = k.sasl_mechanism
    opts: dict[str, Any] = {"sasl_mechanism": mech}
    if mech in _PASSWORD_MECHANISMS:
        opts["sasl_plain_username"] = k.sasl_username
        opts["sasl_plain_password"] = k.secret("sasl_password")
    elif mech == "OAUTHBEARER":
        provider = token_provider(k)
        try:
            provider.token()  # at startup: a broken token source is a setting to fix
        except SaslAuthenticationFailedError as exc:
            raise ConfigError(str(exc)) from None
        opts["sasl_oauth_token_provider"] = provider
    elif mech == "GSSAPI":
        _require(mech)
        opts["sasl_kerberos_service_name"] = k.sasl_kerberos_service_name
        if k.sasl_kerberos_domain_name:
            opts["sasl_kerberos_domain_name"] = k.sasl_kerberos_domain_name
    elif mech == "AWS_MSK_IAM":
        _require(mech)  # credentials and region: botocore's chain (AWS_* env, profile, role)
    return opts


def _require(mech: str) -> None:
    module, how = _NEEDS[mech]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"ANOMALYD_KAFKA__SASL_MECHANISM={mech} needs the {module} package: {how}"
        )


def token_provider(k: KafkaSettings) -> TokenProvider:
    """The OAUTHBEARER provider for these settings, one per process: every client shares
    its cached token, so a command runs once per refresh, not once per connection."""
    key = (
        k.sasl_oauth_token_file,
        k.sasl_oauth_token_command,
        k.sasl_oauth_token_refresh_s,
        k.sasl_oauth_extensions,
    )
    with _providers_lock:
        if key not in _providers:
            try:
                extensions = parse_extensions(k.sasl_oauth_extensions)
            except ValueError as exc:
                raise ConfigError(f"ANOMALYD_KAFKA__SASL_OAUTH_EXTENSIONS: {exc}") from None
            source = (
                FileSource(k.sasl_oauth_token_file)
                if k.sasl_oauth_token_file is not None
                else CommandSource(k.sasl_oauth_token_command or "")
            )
            _providers[key] = TokenProvider(
                source, refresh_s=k.sasl_oauth_token_refresh_s, extensions=extensions
            )
        return _providers[key]


def _ssl_options(k: KafkaSettings) -> dict[str, Any]:
    if k.ssl_ciphers or k.ssl_crlfile:
        # kafka-python 3 ignores ssl_ciphers and fails on ssl_crlfile (it passes a `crl`
        # keyword Python's ssl module does not have): it gets a whole context instead.
        return {"ssl_context": ssl_context(k)}
    opts: dict[str, Any] = {"ssl_check_hostname": k.ssl_check_hostname}
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(k, name)
        if path is not None:
            opts[name] = str(path)
    pw = k.secret("ssl_password")
    if pw:
        opts["ssl_password"] = pw
    return opts


def ssl_context(k: KafkaSettings) -> ssl.SSLContext:
    """The context kafka-python would build from the ssl_* options, plus CRL and ciphers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = k.ssl_check_hostname
    try:
        if k.ssl_cafile is not None:
            ctx.load_verify_locations(str(k.ssl_cafile))
        else:
            ctx.load_default_certs()
        if k.ssl_certfile is not None:
            ctx.load_cert_chain(
                str(k.ssl_certfile),
                str(k.ssl_keyfile) if k.ssl_keyfile else None,
                k.secret("ssl_password"),
            )
        if k.ssl_crlfile is not None:  # OpenSSL takes CRLs from a "CA" file too
            ctx.load_verify_locations(str(k.ssl_crlfile))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    except ssl.SSLError as exc:
        raise ConfigError(f"the TLS files of kafka.ssl_* cannot be used: {exc}") from None
    try:
        if k.ssl_ciphers:
            ctx.set_ciphers(k.ssl_ciphers)  # TLS 1.2; TLS 1.3 suites stay OpenSSL's
    except ssl.SSLError:
        raise ConfigError(
            f"ANOMALYD_KAFKA__SSL_CIPHERS={k.ssl_ciphers!r} selects no cipher this OpenSSL "
            "knows (OpenSSL cipher-list syntax, e.g. ECDHE+AESGCM)"
        ) from None
    return ctx
