"""The crypto worker processes: RSA private-key work in a spawned ProcessPoolExecutor, away
from the event loop. What each does as it starts."""

import os
import threading
import time

from . import memory

PARENT_CHECK_SECONDS = 1.0


def start(bridge: int) -> None:
    """Large buffers go back to the system at once (`memory`), and the worker ends with
    the bridge, process `bridge`: it waits on its task queue, whose writing end it holds as
    well, so a bridge killed with SIGKILL (even while the worker was starting) would leave
    it waiting there for ever."""
    memory.return_large_buffers()

    def end_with_bridge() -> None:
        while os.getppid() == bridge:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(0)

    threading.Thread(target=end_with_bridge, name="end-with-bridge", daemon=True).start()


def ready() -> int:
    """A round trip and nothing more: the daemon sends one to each worker as it starts, so
    that none is started under the first messages' load (and counted in their time)."""
    return os.getpid()
