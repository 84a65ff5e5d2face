"""client_options: every security setting reaches kafka-python, or a clear ConfigError."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from detector.config import KafkaSettings
from detector.errors import ConfigError
from detector.kafka import clients, security


def make_ca(d: Path) -> tuple[Path, Path]:
    """A CA certificate and its (empty) certificate revocation list, by openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    (d / "index.txt").write_text("")
    (d / "crlnumber").write_text("01\n")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
        "default_md = sha256\ndefault_crl_days = 1\n"
    )
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA",
    )  # fmt: skip
    openssl(
        "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.pem",
        "-out", "crl.pem",
    )  # fmt: skip
    return d / "ca.pem", d / "crl.pem"


def test_scram_over_tls_passes_credentials_ca_and_hostname_check(tmp_path: Path) -> None:
    ca, _ = make_ca(tmp_path)
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    k = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="anomalyd",
        sasl_password_file=pw,
        ssl_cafile=ca,
        ssl_check_hostname=False,
    )

    opts = clients.client_options(k)

    assert opts["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("anomalyd", "s3cret")
    assert opts["ssl_cafile"] == str(ca)
    assert opts["ssl_check_hostname"] is False


def test_the_hostname_is_checked_unless_turned_off() -> None:
    opts = clients.client_options(KafkaSettings(security_protocol="SSL"))
    assert opts["ssl_check_hostname"] is True
    assert "sasl_mechanism" not in opts


def test_a_crl_or_ciphers_give_kafka_python_a_whole_tls_context(tmp_path: Path) -> None:
    ca, crl = make_ca(tmp_path)
    k = KafkaSettings(
        security_protocol="SSL", ssl_cafile=ca, ssl_crlfile=crl, ssl_ciphers="ECDHE+AESGCM"
    )

    opts = clients.client_options(k)

    ctx = opts["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert ctx.check_hostname
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all("ECDHE" in n and "GCM" in n for n in tls12)
    assert "ssl_crlfile" not in opts  # kafka-python 3 would crash on it


def test_a_cipher_list_openssl_rejects_is_a_config_error() -> None:
    k = KafkaSettings(security_protocol="SSL", ssl_ciphers="NO-SUCH-CIPHER")
    with pytest.raises(ConfigError, match="ANOMALYD_KAFKA__SSL_CIPHERS='NO-SUCH-CIPHER'"):
        clients.client_options(k)


def test_gssapi_passes_the_kerberos_service_and_domain(monkeypatch: pytest.MonkeyPatch) -> None:
    # The gssapi package is optional and absent here: stand json in for it.
    monkeypatch.setitem(security._NEEDS, "GSSAPI", ("json", ""))
    k = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="GSSAPI",
        sasl_kerberos_service_name="kafka-prod",
        sasl_kerberos_domain_name="kafka.example.org",
    )

    opts = clients.client_options(k)

    assert opts["sasl_mechanism"] == "GSSAPI"
    assert opts["sasl_kerberos_service_name"] == "kafka-prod"
    assert opts["sasl_kerberos_domain_name"] == "kafka.example.org"
    assert "sasl_plain_password" not in opts


@pytest.mark.parametrize(
    ("mechanism", "module", "protocol"),
    [("GSSAPI", "gssapi", "SASL_PLAINTEXT"), ("AWS_MSK_IAM", "botocore", "SASL_SSL")],
)
def test_an_optional_mechanism_without_its_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, mechanism: str, module: str, protocol: str
) -> None:
    monkeypatch.setitem(security._NEEDS, mechanism, (f"{module}_not_here", f"pip install {module}"))
    k = KafkaSettings(security_protocol=protocol, sasl_mechanism=mechanism)  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=f"SASL_MECHANISM={mechanism} needs .*pip install {module}"
    ):
        clients.client_options(k)


def test_msk_iam_needs_tls() -> None:
    with pytest.raises(ValueError, match="AWS_MSK_IAM needs ANOMALYD_KAFKA__SECURITY_PROTOCOL"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="AWS_MSK_IAM")


def test_password_mechanisms_still_need_a_user_and_password() -> None:
    with pytest.raises(ValueError, match="SASL PLAIN needs ANOMALYD_KAFKA__SASL_USERNAME"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN")
    with pytest.raises(ValueError, match="ANOMALYD_KAFKA__SASL_PASSWORD_FILE"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u")
    k = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=SecretStr("p"),
    )
    assert clients.client_options(k)["sasl_plain_password"] == "p"


def test_a_missing_crl_file_is_refused_by_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"kafka\.ssl_crlfile=.*does not exist"):
        KafkaSettings(security_protocol="SSL", ssl_crlfile=tmp_path / "nope.pem")
