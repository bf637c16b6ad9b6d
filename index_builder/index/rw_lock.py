"""A readers-writer lock for an index served from several threads: searches and reads run together, edits alone."""

import contextlib
import threading


class ReadWriteLock:
    """Many readers or one writer. A waiting writer goes before new readers (so a stream of searches cannot starve
    an edit), but a thread that already reads may read again, and the writer's thread may read while it writes, so
    nested calls never deadlock. A thread that reads cannot start writing (that would wait for itself): it gets a
    RuntimeError."""

    def __init__(self):
        self._condition = threading.Condition()
        self._reads = {}  # thread -> how many reads it holds
        self._writer = None  # the thread that writes
        self._depth = 0  # nested writes of that thread
        self._waiting_writers = 0

    @contextlib.contextmanager
    def reading(self):
        me = threading.current_thread()
        with self._condition:
            if not self._reads.get(me) and self._writer is not me:
                while self._writer is not None or self._waiting_writers:
                    self._condition.wait()
            self._reads[me] = self._reads.get(me, 0) + 1
        try:
            yield
        finally:
            with self._condition:
                self._reads[me] -= 1
                if not self._reads[me]:
                    del self._reads[me]
                    self._condition.notify_all()

    @contextlib.contextmanager
    def writing(self):
        me = threading.current_thread()
        with self._condition:
            if self._writer is not me:
                if self._reads.get(me):
                    raise RuntimeError("This thread is reading the index (inside index.reading()); edit it after "
                                       "the block ends.")
                self._waiting_writers += 1
                try:
                    while self._writer is not None or self._reads:
                        self._condition.wait()
                finally:
                    self._waiting_writers -= 1
                self._writer = me
            self._depth += 1
        try:
            yield
        finally:
            with self._condition:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    self._condition.notify_all()
