"""The Alertmanager sink: incident events posted to ``<url>/api/v2/alerts`` after Kafka has them.

:class:`AlertmanagerTee` wraps the worker's transport: every event sent to the alerts topic
is queued, and posted only once the broker has acknowledged it — after ``flush`` (at least
once) or after the transaction's ``commit`` (exactly once) — so a Kafka failure never
leaves Alertmanager ahead of the topic, the system of record. A replay re-posts the same
alerts: Alertmanager merges them by label set.

Alertmanager being down never stops the worker: a failed POST is counted
(``anomalyd_alertmanager_posts_total{result="failed"}``), logged, kept and tried again
after a backoff (1 s doubling to 60 s) at the next flush or poll; past ``max_pending`` the
oldest alerts are given up, loudly (``anomalyd_alertmanager_dropped_alerts_total``, an
ERROR log). A 4xx other than 429 means the alerts are malformed, which no retry fixes:
they are given up the same way.

Firing alerts are re-posted every ``resend_interval_s`` while this worker knows their
incident is open (the ones it opened, up to ``_MAX_TRACKED``), each post ending ``hold_s``
later. Why both: Alertmanager resolves an alert once its ``endsAt`` passes, so an
incident open for hours must be re-asserted; but a restart or a rebalance hands the
stream to a worker that did not post its opening and so does not re-post it — the long
hold keeps such an alert firing until that worker's ``resolved`` event ends it. A model
without incidents alerts per reading and resolves nothing: each alert is posted once and
ends ``resend_interval_s`` later.
"""

from __future__ import annotations

import base64
import http.client
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from detector.config import Settings
from detector.errors import BrokerError
from detector.kafka.transport import (
    Headers,
    RebalanceCallback,
    Record,
    TopicPartition,
    Transport,
)
from detector.observability.metrics import Metrics
from detector.sinks.alertmanager import AlertOptions, firing_alert, resolved_alert, to_alerts
from detector.sinks.settings import AlertmanagerSettings

__all__ = ["AlertmanagerSink", "AlertmanagerTee", "HttpPoster", "Poster", "with_alertmanager"]

log = logging.getLogger("anomalyd.alertmanager")

_CHUNK = 500  # alerts per POST
_POST_BUDGET_S = 2.0  # seconds of POSTs per call; the rest waits for the next turn
_MAX_TRACKED = 10_000  # open incidents re-posted; older ones rely on hold_s
_BACKOFF = (1.0, 60.0)  # first and largest wait after a failed POST, in seconds


class Poster(Protocol):
    """One POST of a JSON body; returns the HTTP status and the start of the reply.

    Raises ``OSError`` when no reply came (refused, timed out, DNS).
    """

    def __call__(self, body: bytes) -> tuple[int, str]: ...


class HttpPoster:
    """POSTs to ``<url>/api/v2/alerts`` with the configured auth and CA; no proxy."""

    def __init__(self, s: AlertmanagerSettings) -> None:
        assert s.url is not None
        self.s = s
        self.endpoint = s.url.rstrip("/") + "/api/v2/alerts"
        ctx = ssl.create_default_context(cafile=str(s.ca_file)) if s.ca_file else None
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=ctx),
            _NoRedirect(),
        )

    def __call__(self, body: bytes) -> tuple[int, str]:
        req = urllib.request.Request(self.endpoint, body, self._headers(), method="POST")
        try:
            with self._opener.open(req, timeout=self.s.timeout_s) as resp:
                return int(resp.status), resp.read(500).decode(errors="replace")
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:  # refused by _NoRedirect: say where it points
                return exc.code, f"redirected to {exc.headers.get('Location')}: fix the url"
            return exc.code, exc.read(500).decode(errors="replace")
        except http.client.HTTPException as exc:  # a garbled reply: as if none came
            raise OSError(f"bad HTTP reply: {exc!r}") from exc

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        token = self.s.secret("bearer_token")  # a file is read again: tokens rotate
        if token:
            h["Authorization"] = f"Bearer {token}"
        elif self.s.username:
            pair = f"{self.s.username}:{self.s.secret('password') or ''}".encode()
            h["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        return h


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Followed, a 301/302 turns the POST into a GET, which Alertmanager answers 200 while
    the alerts are lost: a redirect is an error (a failed post, retried) instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def where(url: str) -> str:
    """The URL as logged: no user info (it may hold a password), no query.

    >>> where("http://bob:s3cret@am:9093/x?token=t")
    'http://am:9093/x'
    """
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}{u.path}"


class AlertmanagerSink:
    """Events in (:meth:`add`), alerts out (:meth:`post`); re-posts open incidents (:meth:`tick`).

    ``clock`` is wall time in seconds (alert times), ``monotonic`` the backoff's and the
    resend's clock.
    """

    def __init__(
        self,
        opts: AlertOptions,
        poster: Poster,
        metrics: Metrics,
        *,
        target: str = "alertmanager",
        resend_interval_s: float = 60.0,
        max_pending: int = 100_000,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        incidents: Callable[[], bool] = lambda: True,
    ) -> None:
        self.opts = opts
        # Whether the served model pairs opens with resolves; else each alert is one
        # anomalous reading, posted once to end a resend interval later (none resolves it).
        self.incidents = incidents
        self.poster = poster
        self.metrics = metrics
        self.target = target
        self.resend_interval_s = resend_interval_s
        self.max_pending = max_pending
        self.clock = clock
        self.monotonic = monotonic
        self.queued: list[dict[str, Any]] = []  # sent to Kafka, not yet acknowledged
        self.pending: deque[dict[str, Any]] = deque()  # acknowledged, not yet posted
        self.open: OrderedDict[str, Mapping[str, Any]] = OrderedDict()  # incident -> open event
        self._retry_at = 0.0
        self._wait = _BACKOFF[0]
        self._next_resend = monotonic() + resend_interval_s

    def add(self, doc: Mapping[str, Any]) -> None:
        """An event sent to the alerts topic; posted once :meth:`acknowledged` says so."""
        self.queued.append(dict(doc))

    def discard(self) -> None:
        """The queued events' transaction was aborted: they were never published."""
        self.queued.clear()

    def acknowledged(self) -> None:
        """The broker has every queued event: turn them into alerts and post them."""
        now_ms = int(self.clock() * 1000)
        for doc in self.queued:
            self._enqueue(self._alerts(doc, now_ms))
        self.queued.clear()
        self.post()

    def tick(self) -> None:
        """Re-post the open incidents when due, and what a failed POST left pending."""
        # Not while a failed POST is pending: its alerts are still fresh; copies would pile up.
        if self.monotonic() >= self._next_resend and self.open and not self.pending:
            now_ms = int(self.clock() * 1000)
            self._enqueue([firing_alert(d, self.opts, now_ms) for d in self.open.values()])
            self._next_resend = self.monotonic() + self.resend_interval_s
        self.post()

    def forget(self, revoked: list[TopicPartition]) -> None:
        """Stop re-posting the open incidents of streams on ``revoked`` partitions (by the
        opening reading's source): their new owner resolves them, and a re-post from here
        would fire them again after that."""
        gone = {(tp.topic, tp.partition) for tp in revoked}
        for incident, doc in list(self.open.items()):
            src = doc.get("source") or {}
            if (src.get("topic"), src.get("partition")) in gone:
                del self.open[incident]

    def post(self, *, last: bool = False) -> None:
        """POST what is pending, in chunks; on a failure keep it and back off. At most
        ``_POST_BUDGET_S`` per call: a backlog drains over the next turns, never stalling
        the loop past its poll interval. ``last``: the worker is stopping, try even during
        a backoff."""
        if not self.pending or (self.monotonic() < self._retry_at and not last):
            return
        until = self.monotonic() + _POST_BUDGET_S
        while self.pending and self.monotonic() < until:
            chunk = [self.pending[i] for i in range(min(_CHUNK, len(self.pending)))]
            try:
                status, reply = self.poster(orjson.dumps(chunk))
            except OSError as exc:
                status, reply = 0, str(exc)
            if 200 <= status < 300:
                self.metrics.alertmanager_posts.labels("ok").inc()
                for _ in chunk:
                    self.pending.popleft()
                self._wait = _BACKOFF[0]
                continue
            if 400 <= status < 500 and status != 429:  # malformed: no retry will fix it
                self.metrics.alertmanager_posts.labels("rejected").inc()
                for _ in chunk:
                    self.pending.popleft()
                self._give_up(len(chunk), f"rejected with HTTP {status}: {reply[:300]}")
                continue
            self.metrics.alertmanager_posts.labels("failed").inc()
            log.warning(
                "cannot post %d alerts to %s (%s); retrying in %.0f s",
                len(self.pending),
                self.target,
                f"HTTP {status}: {reply[:200]}" if status else reply,
                self._wait,
            )
            self._retry_at = self.monotonic() + self._wait
            self._wait = min(self._wait * 2, _BACKOFF[1])
            return

    def _alerts(self, doc: Mapping[str, Any], now_ms: int) -> list[dict[str, Any]]:
        incident = str(doc.get("incident_id"))
        if doc.get("event") == "resolved":
            opened = self.open.pop(incident, None)
            if opened is not None:  # the opening rule and model are known: resolve that alert
                same = {**doc, "model": opened["model"]}  # a retrained model may be renamed
                return [resolved_alert(same, self.opts, now_ms, str(opened["rule"]))]
        elif not self.incidents():
            brief = replace(self.opts, hold_s=self.resend_interval_s)
            return [firing_alert(doc, brief, now_ms)]
        else:
            self.open[incident] = doc
            if len(self.open) > _MAX_TRACKED:  # the oldest now ends after hold_s
                self.open.popitem(last=False)
        return to_alerts(doc, self.opts, now_ms)

    def _enqueue(self, alerts: list[dict[str, Any]]) -> None:
        self.pending.extend(alerts)
        over = len(self.pending) - self.max_pending
        if over > 0:
            for _ in range(over):
                self.pending.popleft()
            self._give_up(over, f"more than max_pending={self.max_pending} waiting")

    def _give_up(self, n: int, why: str) -> None:
        self.metrics.alertmanager_dropped.inc(n)
        log.error(
            "gave up %d alerts for %s: %s (they are in the alerts topic)", n, self.target, why
        )


class AlertmanagerTee:
    """A transport that hands the alerts topic's events to ``sink`` once Kafka has them.

    ``after_commit``: exactly once, where a send is published only by its transaction's
    commit; otherwise a ``flush`` acknowledges it.
    """

    def __init__(
        self, inner: Transport, sink: AlertmanagerSink, alerts_topic: str, *, after_commit: bool
    ) -> None:
        self.inner = inner
        self.sink = sink
        self.alerts_topic = alerts_topic
        self.after_commit = after_commit

    def subscribe(
        self, topic: str, on_assigned: RebalanceCallback, on_revoked: RebalanceCallback
    ) -> None:
        def revoked(tps: list[TopicPartition]) -> None:
            on_revoked(tps)
            self.sink.forget(tps)  # their incidents are the next owner's to keep firing

        self.inner.subscribe(topic, on_assigned, revoked)

    def poll(self, timeout_ms: int, max_records: int) -> list[Record]:
        self.sink.tick()  # between batches: nothing half-sent is queued
        return self.inner.poll(timeout_ms, max_records)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            self.inner.commit(offsets)
        except BrokerError:
            if self.after_commit:  # aborted: its events were never published
                self.sink.discard()
            raise
        if self.after_commit:
            self.sink.acknowledged()

    def send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        self.inner.send(topic, key, value, headers)
        if topic == self.alerts_topic and value is not None:
            self.sink.add(orjson.loads(value))

    def flush(self) -> None:
        self.inner.flush()
        if not self.after_commit:
            self.sink.acknowledged()

    def lag(self, tp: TopicPartition) -> int | None:
        return self.inner.lag(tp)

    def close(self) -> None:
        self.sink.post(last=True)  # a last try, also for what a backoff holds back
        if self.sink.pending:
            log.error(
                "stopping with %d alerts not posted to %s (they are in the alerts topic)",
                len(self.sink.pending),
                self.sink.target,
            )
        self.inner.close()


def with_alertmanager(
    transport: Transport,
    settings: Settings,
    metrics: Metrics,
    incidents: Callable[[], bool] = lambda: True,
) -> Transport:
    """``transport``, teeing incidents to Alertmanager when ``alertmanager.url`` is set;
    ``incidents``: whether the served model tracks incidents now."""
    s = settings.alertmanager
    if s.url is None:
        return transport
    opts = AlertOptions(s.severity, s.stream_label, s.hold_s, s.generator_url)
    sink = AlertmanagerSink(
        opts,
        HttpPoster(s),
        metrics,
        target=where(s.url),
        resend_interval_s=s.resend_interval_s,
        max_pending=s.max_pending,
        incidents=incidents,
    )
    log.info("posting incidents to Alertmanager at %s", where(s.url))
    eos = settings.delivery == "exactly_once"
    return AlertmanagerTee(transport, sink, settings.topics.alerts, after_commit=eos)
