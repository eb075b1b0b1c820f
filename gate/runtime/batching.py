"""One encoder for several doors: faces that arrive together share a forward pass."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np

from gate.components import Encoder, Face


class SharedEncoder:
    """Collects encode requests from door threads for up to ``wait_s``, then runs them at once.

    Encoders that offer ``encode_many(items)`` get one call for the whole batch;
    others are called once per image. With a single door there is no waiting.
    """

    def __init__(self, encoder: Encoder, parties: int, wait_s: float = 0.005):
        self.encoder = encoder
        self.parties = max(1, parties)
        self.wait_s = wait_s
        self.batches: list[int] = []  # images per forward pass, for statistics
        self._requests: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        if self.parties > 1:
            self._worker = threading.Thread(target=self._serve, name="gate-encoder", daemon=True)
            self._worker.start()

    def set_parties(self, parties: int) -> None:
        """The number of doors now (doors come and go while gate runs)."""
        self.parties = max(1, parties)
        if self.parties > 1 and self._worker is None and not self._stop.is_set():
            self._worker = threading.Thread(target=self._serve, name="gate-encoder", daemon=True)
            self._worker.start()

    def encode(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """Embeddings of ``faces`` (blocks until their batch has run)."""
        if self._worker is None:
            return self.encoder.encode(image, faces)
        future: Future = Future()
        self._requests.put((image, faces, future))
        return future.result()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._requests.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.parties:
                try:
                    batch.append(self._requests.get(timeout=self.wait_s))
                except queue.Empty:
                    break
            self._run(batch)

    def _run(self, batch: list) -> None:
        try:
            items = [(image, faces) for image, faces, _ in batch]
            many = getattr(self.encoder, "encode_many", None)
            if many is not None:
                results = many(items)
            else:
                results = [self.encoder.encode(image, faces) for image, faces in items]
            self.batches.append(len(batch))
            for (_, _, future), result in zip(batch, results, strict=True):
                future.set_result(result)
        except Exception as exc:  # every waiting door gets the error, none hangs
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)

    def close(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=2)
