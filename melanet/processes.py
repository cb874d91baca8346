"""Worker processes that die with their parent, and interrupts that end a command in one line.

Why: a ``ProcessPoolExecutor`` worker blocks on its task pipe; when the parent
is killed (``kill -9``, OOM killer) nobody closes that pipe and the worker
waits forever, holding its memory. Each worker therefore

- asks Linux to kill it when its parent dies (``prctl(PR_SET_PDEATHSIG,
  SIGKILL)``, through ctypes), and
- runs a watchdog thread that exits the process once the parent is gone (the
  parent pid changed or no longer exists): the fallback where prctl is not
  available (macOS) or the parent is a fork server;
- ignores SIGINT: Ctrl-C reaches every process of the terminal's group, and
  only the parent should react (it stops the pool, prints one line).

:func:`install_interrupt_handlers` turns SIGINT and SIGTERM in the CLI process
into :class:`Interrupted`, a ``BaseException`` (like KeyboardInterrupt, no
``except Exception`` swallows it) that click does not turn into "Aborted!"
and exit 1: the CLI prints one line and exits 130 (SIGINT) or 143 (SIGTERM),
after every ``finally`` and context manager has cleaned up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

PR_SET_PDEATHSIG = 1
WATCHDOG_SECONDS = 1.0


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the CLI process; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def install_interrupt_handlers() -> None:
    """In the CLI's main thread: SIGINT / SIGTERM raise :class:`Interrupted`."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _raise_interrupted)
        signal.signal(signal.SIGTERM, _raise_interrupted)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (pid reused): treat as gone
        return False
    return True


def _watchdog(parent_pid: int, ppid_at_start: int) -> None:
    while True:
        time.sleep(WATCHDOG_SECONDS)
        if os.getppid() != ppid_at_start or not _pid_alive(parent_pid):
            os._exit(1)


def worker_init(parent_pid: int, initializer: Callable[..., None] | None = None, *args: Any) -> None:
    """Pool initializer: die with ``parent_pid``; leave SIGINT to the parent; default SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked child inherits the CLI's handler otherwise
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:
            pass  # the watchdog below still ends the worker
    ppid = os.getppid()
    if ppid != parent_pid and not _pid_alive(parent_pid):  # the parent died before prctl took hold
        os._exit(1)
    threading.Thread(target=_watchdog, args=(parent_pid, ppid), daemon=True, name="melanet-watchdog").start()
    if initializer is not None:
        initializer(*args)


def pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process (see the module notes)."""
    return ProcessPoolExecutor(max_workers=workers, initializer=worker_init, initargs=(os.getpid(),))


def imap_unordered(fn: Callable[..., Any], tasks: Iterable[tuple], workers: int,
                   in_flight: int | None = None) -> Iterator[Any]:
    """``fn(*task)`` for every task on ``workers`` processes, results as they finish.

    At most ``in_flight`` (default ``4 * workers``) tasks are queued, so memory
    stays flat. If the consumer stops (an exception, an interrupt, ``close()``),
    queued tasks are cancelled and the workers are killed instead of being
    waited for.
    """
    in_flight = in_flight or 4 * workers
    executor = pool(workers)
    finished = False
    try:
        pending: set[Future] = set()
        for task in tasks:
            pending.add(executor.submit(fn, *task))
            if len(pending) >= in_flight:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
        finished = True
    finally:
        if finished:
            executor.shutdown(wait=True)
        else:
            _kill(executor)


def _kill(executor: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what is queued, kill the workers, do not wait for running tasks."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.kill()
    for proc in processes:
        proc.join(timeout=5)
