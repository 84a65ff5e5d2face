"""One TLS handshake and SASL login of our own, before a client connects.

kafka-python 3.0 cannot tell a refused login from an unreachable broker: the broker
answers a failed SASL authentication and closes the connection at once, the client
drops that last answer and retries the login until its bootstrap times out (a retry
storm ending in "Unable to bootstrap"). :func:`check_login` reads the broker's answer
itself, so that a wrong password or an untrusted certificate fails at once, naming the
setting to fix; anything else (nothing listening, a timeout) is left to the caller's
retry.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from kafka.errors import KafkaError
from kafka.net.sasl import get_sasl_mechanism
from kafka.protocol.parser import KafkaProtocol
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

from detector.config import KafkaSettings
from detector.errors import BrokerError
from detector.kafka.security import security_options, ssl_context

__all__ = ["check_login"]

_UNSUPPORTED_SASL_MECHANISM = 33


def check_login(k: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Raise BrokerError if the first broker that answers refuses our TLS or SASL."""
    if k.security_protocol == "PLAINTEXT":
        return
    for server in k.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:9092
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError):
            continue  # not listening (yet): the client's retry waits for it
        with sock:
            try:
                _login(k, sock, host, server.strip())
            except (OSError, KafkaError):
                continue  # not a refusal we can name: let the client find out
        return


def _login(k: KafkaSettings, sock: socket.socket, host: str, server: str) -> None:
    conn: Any = sock
    if k.security_protocol in ("SSL", "SASL_SSL"):
        try:
            conn = ssl_context(k).wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            if "revoked" in str(exc.verify_message):
                raise BrokerError(
                    f"TLS: the certificate of the broker at {server} is revoked by "
                    "ANOMALYD_KAFKA__SSL_CRLFILE; the broker needs a new certificate"
                ) from None
            raise BrokerError(
                f"TLS: the certificate of the broker at {server} is not accepted "
                f"({exc.verify_message}); set ANOMALYD_KAFKA__SSL_CAFILE to the CA that "
                "signed it; a host-name mismatch: connect by a name the certificate has, or "
                "set ANOMALYD_KAFKA__SSL_CHECK_HOSTNAME=false"
            ) from None
    if not k.security_protocol.startswith("SASL"):
        return
    mech = k.sasl_mechanism
    proto = KafkaProtocol(client_id=k.client_id)
    shake = _roundtrip(conn, proto, SaslHandshakeRequest[1](mechanism=mech))
    if shake.error_code == _UNSUPPORTED_SASL_MECHANISM:
        raise BrokerError(
            f"the broker at {server} does not enable SASL {mech} (it offers "
            f"{', '.join(shake.mechanisms)}): set ANOMALYD_KAFKA__SASL_MECHANISM"
        )
    config = security_options(k) | {"security_protocol": k.security_protocol}
    sasl = get_sasl_mechanism(mech)(host=host, **config)
    while not sasl.is_done():
        answer = _roundtrip(conn, proto, SaslAuthenticateRequest[1](auth_bytes=sasl.auth_bytes()))
        if answer.error_code:
            who = f" of {k.sasl_username!r}" if k.sasl_username else ""
            raise BrokerError(
                f"the broker at {server} refused the SASL {mech} login{who}: "
                f"{answer.error_message}; {_what_to_check(mech)} (not retried)"
            )
        sasl.receive(answer.auth_bytes)


def _what_to_check(mech: str | None) -> str:
    if mech == "OAUTHBEARER":
        return "check the token from ANOMALYD_KAFKA__SASL_OAUTH_TOKEN_FILE / _COMMAND"
    if mech == "GSSAPI":
        return "check the Kerberos ticket or keytab and ANOMALYD_KAFKA__SASL_KERBEROS_*"
    if mech == "AWS_MSK_IAM":
        return "check the AWS credentials and region botocore finds"
    return (
        "check ANOMALYD_KAFKA__SASL_USERNAME, ANOMALYD_KAFKA__SASL_PASSWORD (or "
        "ANOMALYD_KAFKA__SASL_PASSWORD_FILE) and ANOMALYD_KAFKA__SASL_MECHANISM"
    )


def _roundtrip(conn: Any, proto: KafkaProtocol, request: Any) -> Any:
    """Send one request and block for its response (the broker may close right after)."""
    proto.send_request(request)
    conn.sendall(proto.send_bytes())
    while True:
        data = conn.recv(65536)
        if not data:
            raise ConnectionError("the broker closed the connection")
        got = proto.receive_bytes(data)
        if got:
            return got[0][1]
