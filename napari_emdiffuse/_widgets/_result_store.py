"""The result-store field of a widget that streams lazy layers to disk, and the one-line status a
streamed run ends with (shared by the Restore and Isotropic widgets)."""
from __future__ import annotations

import time

from magicgui.widgets import FileEdit
from napari.utils.notifications import show_error, show_info

from ._worker import Finished


def store_field(what: str) -> FileEdit:
    return FileEdit(label="result store", mode="w", filter="*.zarr",
                    tooltip=f"zarr/dask {what} are processed chunk by chunk into this OME-Zarr store (empty: a "
                            "folder in the temporary directory); a re-run with the same settings resumes "
                            "where the last one stopped")


def bind_store(field: FileEdit, settings) -> None:
    """Two-way binding of the field and ``settings.store`` ("" when no store was chosen)."""
    field.changed.connect(lambda path: setattr(settings, "store", store_text(path)))
    settings.events.store.connect(lambda text: setattr(field, "value", text))


def store_text(path) -> str:
    text = str(path or "")
    return "" if text in ("", ".") else text


def stream_status(update: Finished, verb: str, where: str, written: int, total: int, started: float) -> str:
    """How a streamed run ended (notifying errors and cancels): ``written`` chunks by this run of
    ``total``; the rest came from an earlier run that this one resumed."""
    if update.error:
        show_error(update.error)
        return f"failed after {written} chunk(s)"
    if update.cancelled:
        status = f"cancelled: {written} chunk(s) kept in {where}; run again to resume"
        show_info(status)
        return status
    status = f"{verb} {total} chunk(s) into {where} in {time.perf_counter() - started:.1f} s"
    return status + (f" ({total - written} from an earlier run)" if written < total else "")
