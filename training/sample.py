"""At most N streams of a fleet's history, chosen while it is read.

One model and one set of thresholds serve the whole fleet, so a few thousand streams teach
them what a million would, and training time and memory grow with the streams read: every
calibration part replays its streams' whole history (hours at 100,000 streams). The
sample is the ``most`` streams whose ids hash lowest (blake2b, as :func:`training.data.folds`
uses): the same streams whatever order the history arrives in, and a stream is either in
or out, never cut. It is decided as readings arrive, so readings of a stream outside it
are dropped as they are read: a stream is admitted while its hash is among the lowest seen
so far, and a later stream with a lower hash evicts the highest, whose readings read so far
are dropped at the end (:meth:`StreamSample.kept`) — about one reading each where history
arrives in time order, more where it arrives stream by stream.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from training.data import StreamSeries, stream_key

__all__ = ["DEFAULT_MAX_STREAMS", "StreamSample"]

DEFAULT_MAX_STREAMS = 2000


class StreamSample:
    """The ``most`` lowest-hashing stream ids of those offered to :meth:`admit`.

    >>> s = StreamSample(2)
    >>> [s.admit(i) for i in ("a", "c", "b", "a")], s.seen, sorted(s.chosen)
    ([True, True, False, True], 3, ['a', 'c'])
    """

    def __init__(self, most: int) -> None:
        if most < 1:
            raise ValueError(f"a sample needs at least one stream, got {most}")
        self.most = most
        self._heap: list[tuple[int, str]] = []  # (-hash, id): the highest hash on top
        self.chosen: set[str] = set()
        self._out: set[str] = set()

    @property
    def seen(self) -> int:
        """Distinct streams offered so far."""
        return len(self.chosen) + len(self._out)

    def admit(self, stream_id: str) -> bool:
        """Whether ``stream_id`` is in the sample as far as the streams seen so far go."""
        if stream_id in self.chosen:
            return True
        if stream_id in self._out:
            return False
        key = -int.from_bytes(stream_key(stream_id), "big")
        if len(self._heap) < self.most:
            heapq.heappush(self._heap, (key, stream_id))
        elif key > self._heap[0][0]:  # hashes lower than the highest chosen one
            _, evicted = heapq.heappushpop(self._heap, (key, stream_id))
            self.chosen.discard(evicted)
            self._out.add(evicted)
        else:
            self._out.add(stream_id)
            return False
        self.chosen.add(stream_id)
        return True

    def kept(self, series: Sequence[StreamSeries]) -> list[StreamSeries]:
        """``series`` of the chosen streams, in their order (each offered first if it was not)."""
        for s in series:
            self.admit(s.stream_id)
        return [s for s in series if s.stream_id in self.chosen]
