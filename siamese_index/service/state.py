"""The per-process state of the service: the index, its key store, the batcher, and readiness.

The model is loaded once, in a background thread started with the app (`start`), so that the
server answers /v1/health and /v1/ready at once. Routes get a `Live` view (`live()`), whose parts
are all present, or the reason they are not. No web framework here.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from siamese_index import home_exists
from siamese_index.config import resolve_home
from siamese_index.errors import Busy, InvalidData, SiameseIndexError
from siamese_index.service.batcher import LookupBatcher, Thresholds, set_faiss_threads
from siamese_index.service.keys import KeyStore
from siamese_index.service.settings import ServiceSettings

if TYPE_CHECKING:
    from siamese_index import SiameseIndex

log = logging.getLogger(__name__)

OPEN_DEADLINE_S = 600  # how long start-up retries opening a home another writer holds


class NotReady(Exception):
    """The service cannot answer yet (loading) or at all (start-up failed): a 503."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Live:
    """What a route needs once the service is ready: every part present."""

    settings: ServiceSettings
    index: SiameseIndex
    batcher: LookupBatcher
    started: float  # time.time() when the state was made


def warmup_png() -> bytes:
    """A small grey PNG: verifying it against itself loads the model."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buf, format="PNG")
    return buf.getvalue()


class ServiceState:
    """One process's service: loading -> ready (or error), then shutdown."""

    def __init__(self, settings: ServiceSettings, index: SiameseIndex | None = None) -> None:
        self.settings = settings
        self.index = index
        self.owns_index = index is None
        self.home: Path = Path(index.home) if index is not None else resolve_home(settings.home)
        self.keys: KeyStore | None = None
        self.phase = "loading"  # loading | ready | error
        self.error: str | None = None
        self.started = time.time()
        self.ready_at: float | None = None
        self.batcher: LookupBatcher | None = None
        self.thresholds: Thresholds | None = None
        self.loader: threading.Thread | None = None
        self._stop = threading.Event()
        self._keys_lock = threading.Lock()
        self.open_keys()

    @property
    def status(self) -> str:
        """ok | loading | error, as /v1/health says it."""
        return {"ready": "ok", "loading": "loading"}.get(self.phase, "error")

    def open_keys(self) -> KeyStore | None:
        """The home's key store, opened on first need (a new home has none until it is created)."""
        with self._keys_lock:
            if self.keys is None and home_exists(self.home):
                try:
                    self.keys = KeyStore.open(self.home, lock_timeout=self.settings.lock_timeout)
                except SiameseIndexError as e:
                    log.warning("cannot open the key store of %s yet: %s", self.home, e)
            return self.keys

    def unavailable(self) -> NotReady:
        """Why the service cannot answer now, with the Retry-After to send."""
        if self.phase == "error":
            return NotReady(f"the service could not start: {self.error}", self.settings.retry_after * 5)
        return NotReady("the model is loading; try again shortly", self.settings.retry_after)

    def live(self) -> Live:
        """The ready service's parts; raises NotReady while loading or after a failed start."""
        if self.phase != "ready" or self.index is None or self.batcher is None:
            raise self.unavailable()
        return Live(self.settings, self.index, self.batcher, self.started)

    # -- start-up ------------------------------------------------------------------------------
    def _open_index(self) -> SiameseIndex:
        """Open the home (creating it with the model if allowed), retrying while a writer holds it."""
        from siamese_index import SiameseIndex

        deadline = time.monotonic() + OPEN_DEADLINE_S
        while True:
            try:
                return SiameseIndex.open(
                    self.home,
                    model=self.settings.model,
                    create=self.settings.create,
                    lock_timeout=self.settings.lock_timeout,
                )
            except Busy:
                if self._stop.is_set() or time.monotonic() > deadline:
                    raise
                log.info("the home is busy with another writer; retrying the open")
                time.sleep(1.0)

    def load(self) -> None:
        """Open the index (unless given), load the model, compute the threshold; then ready."""
        try:
            set_faiss_threads(self.settings.faiss_threads)
            index = self.index if self.index is not None else self._open_index()
            self.index = index
            keys = self.open_keys()
            if keys is None:
                raise InvalidData(f"cannot open the key store of {self.home}")
            png = warmup_png()
            index.verify(("warm-up", png), ("warm-up", png), threshold=1.0)  # loads the model
            s = self.settings
            self.thresholds = Thresholds(
                index, keys.db.change_counter, s.threshold_sync_seconds, s.threshold_min_interval
            )
            self.thresholds.current()
            self.batcher = LookupBatcher(index, self.thresholds, s.batch_images, s.faiss_threads)
            self.phase, self.ready_at = "ready", time.time()
            log.info("siamese-index service ready: home %s, model %s", self.home, index.model_id)
        except Exception as e:  # noqa: BLE001 - reported by /v1/health and /v1/ready
            log.exception("the service could not start")
            self.phase, self.error = "error", f"{type(e).__name__}: {e}"

    def start(self) -> None:
        """Load in a background thread (the server answers health and readiness meanwhile)."""
        self.loader = threading.Thread(target=self.load, name="siamese-loader", daemon=True)
        self.loader.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self.loader is not None:
            self.loader.join(timeout=30)
        if self.batcher is not None:
            self.batcher.stop()
        if self.owns_index and self.index is not None:
            self.index.close()
        if self.keys is not None:
            self.keys.close()


__all__ = ["Live", "NotReady", "ServiceState", "warmup_png"]
