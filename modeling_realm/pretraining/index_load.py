"""Loading a refreshed index in a background thread, so that swapping it in costs the trainer nothing.

`IndexRefresher` (async mode) starts an `IndexLoad` when the worker's new version appears and installs the loaded
index at the first `after_step` after the load finished (with several processes: after it finished on all of them).
"""

import threading
import time
from pathlib import Path

from index_builder.index.block_index import BlockIndex


class IndexLoad:
    """`BlockIndex.load_from_disk(directory, verify=False)` in a daemon thread; `pointer` is the `latest.json`
    record that named it."""

    def __init__(self, directory, pointer: dict):
        self.directory, self.pointer = Path(directory), pointer
        self.index: BlockIndex | None = None
        self.error: Exception | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True, name="realm-index-load")
        self._thread.start()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self.index = BlockIndex.load_from_disk(self.directory, verify=False)
        except (OSError, ValueError) as error:  # reported by the refresher as a failed refresh
            self.error = error
        self.seconds = time.perf_counter() - started

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()
