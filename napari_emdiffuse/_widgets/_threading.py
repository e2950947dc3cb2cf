"""Worker-thread plumbing shared by the widgets: start a napari worker with its handlers, turn a
helper thread's reports into a generator of updates, and wait for a run in scripts and tests."""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

from napari.qt.threading import create_worker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication


def start_worker(function, *args, cancel: threading.Event | None = None, **handlers):
    """Start ``function(*args)`` in a napari worker thread, its signals (``yielded=``,
    ``returned=``, ...) connected before it runs so that no early report is missed.

    ``cancel`` is set if napari aborts the worker (it does when the viewer closes): an aborted
    generator is never resumed, so the work it drives must be told to stop."""
    worker = create_worker(function, *args, _start_thread=False)
    for signal, handler in handlers.items():
        getattr(worker, signal).connect(handler)
    if cancel is not None:
        worker.aborted.connect(cancel.set, Qt.ConnectionType.DirectConnection)
    worker.start()
    return worker


def updates_from(produce: Callable, args: tuple, cancel: threading.Event, *, progress: type, final: type,
                 name: str = "emdiffuse-helper") -> Iterator:
    """Run ``produce(*args, put)`` in a helper thread and yield what it puts, so a generator
    worker can report while the compute core is busy inside a call. Of several queued
    ``progress`` reports only the newest is yielded; the generator ends after a ``final`` item.
    Closing it early sets ``cancel`` so the core stops too."""
    out: queue.SimpleQueue = queue.SimpleQueue()
    helper = threading.Thread(target=produce, args=(*args, out.put), name=name, daemon=True)
    helper.start()
    try:
        while True:
            batch = [out.get()]
            while not out.empty():
                batch.append(out.get())
            newest = max((i for i, u in enumerate(batch) if isinstance(u, progress)), default=-1)
            for i, update in enumerate(batch):
                if isinstance(update, progress) and i != newest:
                    continue
                yield update
                if isinstance(update, final):
                    return
    finally:
        cancel.set()
        helper.join(timeout=30)


def wait_while(busy: Callable[[], bool], timeout: float) -> None:
    """Process Qt events until ``busy()`` is false or ``timeout`` seconds have passed."""
    end = time.perf_counter() + timeout
    while busy() and time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)
