"""Keeping the emulator's state in a JSON file, so a restarted emulator keeps its users signed in.

Requests only bump the state's version; a background thread notices and writes a
snapshot at most every FLUSH_INTERVAL_SECONDS, and once more on stop. The disk is
never touched on the request path, except for removing the file on a reset.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from tracecat.emulator.files import write_private
from tracecat.emulator.state import EmulatorState

logger = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS = 0.5
STATE_FILE = "state.json"


class StatePersister:
    """Load `path` into `state` once, then save it whenever it changed, until stop()."""

    def __init__(self, state: EmulatorState, path: Path) -> None:
        self.state = state
        self.path = path
        # Orders writes against removal; never held while taking the state lock.
        self._file_lock = threading.Lock()
        # The highest version on disk, or known to need nothing on disk (a reset).
        self._saved_version = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def load(self) -> None:
        """Restore the saved state if there is any; a bad file is reported and ignored."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as exc:
            logger.warning("Emulator state in %s is unreadable, starting empty: %s", self.path, exc)
            data = None
        if data is not None:
            try:
                self.state.restore(data)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                logger.warning(
                    "Emulator state in %s is not usable, starting empty: %r", self.path, exc
                )
        # What was just loaded (or the empty state) needs no immediate rewrite.
        self._saved_version = self.state.version
        self.state.on_reset = self.clear

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="microsoft-emulator-state", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the background writer and save whatever it has not saved yet."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def flush(self) -> None:
        """Write a snapshot if the state changed since the last one; failures only warn."""
        if self.state.version <= self._saved_version:
            return
        version, data = self.state.snapshot()
        # Serialized outside both locks: requests only wait for the snapshot itself.
        payload = json.dumps(data, separators=(",", ":")).encode()
        with self._file_lock:
            # A reset after this snapshot was taken has already removed the file; an older
            # snapshot must not bring the forgotten state back.
            if version <= self._saved_version:
                return
            try:
                write_private(self.path, payload)
            except OSError as exc:
                logger.warning("Could not save the emulator state to %s: %s", self.path, exc)
                return
            self._saved_version = version

    def clear(self, version: int) -> None:
        """Forget the saved state: the state was reset, leaving it at `version`."""
        with self._file_lock:
            if self._saved_version >= version:
                return  # the file already holds what came after the reset
            self._saved_version = version
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("Could not remove the emulator state %s: %s", self.path, exc)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_SECONDS):
            self.flush()
