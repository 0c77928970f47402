"""SIGINT / SIGTERM as a request to stop: finish the step, write a checkpoint, exit 0.

The handler only sets a flag; the training loop reads it after every step (all ranks
agree through one all-reduce), so no signal ever lands in the middle of an optimizer
step or of a checkpoint write. A second signal of the same kind stops at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager that turns SIGINT / SIGTERM into ``requested = True``.

    Outside the main thread (where Python cannot install handlers) it never triggers.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and self.signal_name == signal.Signals(signum).name:
            # A second identical signal: the user does not want to wait for the checkpoint.
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
