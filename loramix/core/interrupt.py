"""Ctrl-C for long loops: the first one asks the loop to stop at its next safe point (so it can
save a checkpoint), a second one aborts at once."""

from __future__ import annotations


class stop_on_interrupt:
    """A context in which the first SIGINT only raises a flag (checked between steps); a second
    one aborts at once."""

    def __enter__(self):
        import signal
        import threading

        self.flag, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return lambda: self.flag

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        from loramix.core import log

        log.warn("stopping after this step to save a checkpoint (Ctrl-C again to abort now)")

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False
