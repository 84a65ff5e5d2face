"""systemd's service notifications (``sd_notify(3)``): ready, status, watchdog, stopping.

Under ``Type=notify`` systemd starts the unit's dependents once the service says
``READY=1``, and with ``WatchdogSec=`` it restarts a service whose ``WATCHDOG=1`` pings
stop. :meth:`Notifier.serving` says ready when the worker's loop starts, pings the
watchdog while :class:`~detector.observability.liveness.Liveness` says the loop is alive
(waiting for a model or a broker included, as for ``/healthz``) and says ``STOPPING=1``
at the end. Without ``$NOTIFY_SOCKET`` (not started by systemd, or not ``Type=notify``)
it does nothing.

The protocol is written out here rather than taken from a library: it is one datagram
to the Unix socket named by ``$NOTIFY_SOCKET`` (``@`` for the abstract namespace),
which systemd documents as its stable interface and suggests reimplementing
(``sd_notify(3)``, NOTES); the Python bindings wrap libsystemd and need its headers to
build, for these few lines.

>>> n = Notifier.from_env({})  # not under systemd
>>> n.notify("READY=1")
False
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager

__all__ = ["Notifier"]

log = logging.getLogger("anomalyd.notify")

Check = Callable[[], tuple[bool, str]]


class Notifier:
    """Sends notifications to ``address``; pings a watchdog every ``watchdog_s / 2``.

    ``address`` None sends nothing; ``watchdog_s`` None pings no watchdog.
    """

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for, from ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``.

        The variables are removed from ``environ`` (``os.environ`` by default), as
        ``sd_notify``'s ``unset_environment`` does: systemd accepts messages from the
        main process only, so a child must not inherit them.
        """
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec, pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        watchdog_s = None
        # WATCHDOG_PID names the process the watchdog is for; any other leaves it alone.
        if usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(address, watchdog_s)

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; whether it was sent."""
        if not self.address:
            return False
        # A leading "@" names a socket in the abstract namespace, whose address starts
        # with a NUL byte.
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(fields).encode(), addr)
        except OSError as exc:  # a notification is advice: never worth crashing the worker
            log.warning("cannot notify systemd at %s: %s", self.address, exc)
            return False
        return True

    @contextmanager
    def serving(self, live: Check, ready: Check) -> Iterator[None]:
        """``READY=1`` now, watchdog pings while ``live()`` holds, ``STOPPING=1`` at the end.

        ``STATUS=`` (what ``systemctl status`` shows) is ``ready()``'s reason, or why
        the loop is not alive when the pings stop.
        """
        self.notify("READY=1", f"STATUS={ready()[1]}")
        stop = threading.Event()
        pinger = None
        if self.address and self.watchdog_s:
            # Half the watchdog period, as sd_watchdog_enabled(3) recommends.
            pinger = threading.Thread(
                target=self._ping,
                args=(live, ready, self.watchdog_s / 2, stop),
                name="watchdog",
                daemon=True,
            )
            pinger.start()
        try:
            yield
        finally:
            stop.set()
            if pinger is not None:
                pinger.join()
            self.notify("STOPPING=1", "STATUS=stopping")

    def _ping(self, live: Check, ready: Check, every_s: float, stop: threading.Event) -> None:
        while not stop.wait(every_s):
            alive, why = live()
            if alive:
                self.notify("WATCHDOG=1", f"STATUS={ready()[1]}")
            else:  # no ping: systemd restarts the service when the watchdog period ends
                log.error("withholding the watchdog ping, the loop is not alive: %s", why)
                self.notify(f"STATUS=not alive: {why}")
