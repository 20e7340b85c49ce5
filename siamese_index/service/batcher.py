"""Lookups off the request threads: one batcher thread embeds and searches what queued up, with
the identification threshold kept cheap (`Thresholds`). No web framework here."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from siamese_index.errors import SiameseIndexError
from siamese_index.types import Identification

if TYPE_CHECKING:
    from siamese_index import SiameseIndex
    from siamese_index.index.openset import OperatingPoint

log = logging.getLogger(__name__)

Upload = tuple[str, bytes]  # (the name a result reports, the image's bytes)


class NeedsThreshold(SiameseIndexError):
    """The model has no calibrated identification threshold and the request passed none (422)."""


def set_faiss_threads(n: int) -> None:
    """Set FAISS's OpenMP team size for searches made by the calling thread (an OpenMP setting
    belongs to the thread that makes it). n <= 0 keeps FAISS's default."""
    if n > 0:
        import faiss

        faiss.omp_set_num_threads(int(n))


class Thresholds:
    """Keeps lookups off the quadratic gallery check of SiameseIndex.operating_point().

    While computing the operating point is cheap (under sync_seconds), it is computed here when
    the change counter moves (which fills the facade's own cache) and lookups pass threshold=None:
    the facade then uses exactly the threshold the CLI would. Once it gets slow, lookups pass the
    last computed threshold (for the same model) and it is recomputed in the background, at most
    once per max(min_interval, 4 x its duration)."""

    def __init__(
        self, index: SiameseIndex, counter: Callable[[], int], sync_seconds: float, min_interval: float
    ) -> None:
        self._index = index
        self._counter = counter
        self._sync_seconds = sync_seconds
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._key: int | None = None
        self._model: str | None = None
        self._op: OperatingPoint | None = None
        self._duration = 0.0
        self._finished = 0.0
        self._bg: threading.Thread | None = None

    def _compute(self, key: int) -> OperatingPoint:
        t0 = time.perf_counter()
        self._index.refresh()
        model = self._index.model_id
        op = self._index.operating_point()
        self._op, self._key, self._model = op, key, model
        self._duration = time.perf_counter() - t0
        self._finished = time.monotonic()
        log.log(
            logging.INFO if self._duration > self._sync_seconds else logging.DEBUG,
            "operating threshold %s (gallery of %d identities) computed in %.2fs",
            "none" if op.threshold is None else f"{op.threshold:.4g}",
            op.gallery_size,
            self._duration,
        )
        return op

    def _background(self, key: int) -> None:
        try:
            self._compute(key)
        except Exception:  # noqa: BLE001 - keep the stale threshold; try again later
            log.exception("recomputing the operating threshold failed")
            self._finished = time.monotonic()
        finally:
            self._bg = None

    def current(self) -> OperatingPoint:
        """The last OperatingPoint computed, brought up to date first when that is cheap."""
        key = self._counter()
        with self._lock:
            op = self._op
            if op is not None and self._key == key:
                return op
            slow = self._duration > self._sync_seconds
            if op is None or not slow or self._model != self._index.model_id:
                return self._compute(key)
            wait = max(self._min_interval, 4 * self._duration)
            if self._bg is None and time.monotonic() - self._finished >= wait:
                self._bg = threading.Thread(target=self._background, args=(key,), name="siamese-threshold", daemon=True)
                self._bg.start()
            return op

    def for_lookup(self) -> float | None:
        """The threshold a lookup passes: None (the facade computes the current one, cheaply) or
        the last one computed, when computing it has become slow."""
        op = self.current()
        if self._duration <= self._sync_seconds and self._key == self._counter():
            return None
        if op.threshold is None:
            raise NeedsThreshold(f"model {self._index.model_id} has no calibrated threshold: pass `threshold`")
        return float(op.threshold)


@dataclass
class _Job:
    sources: list[Upload]
    k: int
    threshold: float | None
    margin: float | None
    future: Future[list[Identification]]


class LookupBatcher:
    """One thread answers every lookup: jobs queued while it works are embedded together."""

    def __init__(self, index: SiameseIndex, thresholds: Thresholds, max_images: int, faiss_threads: int = 1) -> None:
        self._index = index
        self._faiss_threads = faiss_threads
        self._thresholds = thresholds
        self._max_images = max(1, int(max_images))
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self.lookups = 0  # images looked up
        self.batches = 0  # index.identify calls made for them
        self._thread = threading.Thread(target=self._run, name="siamese-lookups", daemon=True)
        self._thread.start()

    def identify(
        self, sources: list[Upload], k: int, threshold: float | None, margin: float | None
    ) -> list[Identification]:
        """Identify `sources` (blocking the calling thread); one Identification per source, in order."""
        job = _Job(sources, k, threshold, margin, Future())
        self._queue.put(job)
        return job.future.result()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _take(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and whatever else is queued (up to max_images); True when a stop came too."""
        jobs, n = [first], len(first.sources)
        while n < self._max_images:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return jobs, True
            jobs.append(nxt)
            n += len(nxt.sources)
        return jobs, False

    def _run(self) -> None:
        set_faiss_threads(self._faiss_threads)
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, stop = self._take(job)
            try:
                self._answer(jobs)
            except BaseException as e:  # noqa: BLE001 - never leave a request waiting forever
                log.exception("the lookup batcher failed")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
            if stop:
                return

    def _answer(self, jobs: list[_Job]) -> None:
        groups: dict[tuple[float | None, float | None], list[_Job]] = {}
        for j in jobs:
            groups.setdefault((j.threshold, j.margin), []).append(j)
        for (threshold, margin), group in groups.items():
            try:
                answers = self._search(group, threshold, margin)
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                for j in group:
                    j.future.set_exception(e)
                continue
            pos = 0
            for j in group:
                mine = answers[pos : pos + len(j.sources)]
                pos += len(j.sources)
                j.future.set_result([dataclasses.replace(a, candidates=a.candidates[: j.k]) for a in mine])

    def _search(self, group: Sequence[_Job], threshold: float | None, margin: float | None) -> list[Identification]:
        """One index.identify call for every image of `group` (which share threshold and margin)."""
        t0 = time.perf_counter()
        t = self._thresholds.for_lookup() if threshold is None else threshold
        t1 = time.perf_counter()
        sources = [s for j in group for s in j.sources]
        answers = self._index.identify(sources, k=max(j.k for j in group), threshold=t, margin=margin)
        self.lookups += len(sources)
        self.batches += 1
        took = time.perf_counter() - t0
        if took > 0.5:
            log.warning("a lookup batch of %d images took %.2fs (%.2fs for the threshold)", len(sources), took, t1 - t0)
        return answers


__all__ = ["LookupBatcher", "NeedsThreshold", "Thresholds", "Upload", "set_faiss_threads"]
