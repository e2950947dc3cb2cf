"""A live plot of the training and validation loss: pyqtgraph when installed (fast, interactive),
else a plain Qt drawing. The points are kept here for either."""
from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

TRAIN_COLOUR, VAL_COLOUR = "#8ab4f8", "#f28b82"


class LossPlot:
    """``add(step, loss, val_loss=None)`` appends points; ``widget`` is the QWidget to show."""

    def __init__(self):
        self.train: tuple[list[int], list[float]] = ([], [])
        self.val: tuple[list[int], list[float]] = ([], [])
        try:
            self._pyqtgraph()
        except ImportError:
            self.widget = QtLossPlot(self)
            self.backend = "qt"
            self._draw = self.widget.update  # repaints from self.train / self.val

    def _pyqtgraph(self) -> None:
        import pyqtgraph as pg

        self.widget = pg.PlotWidget()
        self.widget.setMinimumHeight(160)
        self.widget.addLegend(offset=(-10, 10))
        self.widget.setLabel("bottom", "step")
        self.widget.setLabel("left", "loss")
        self._train_curve = self.widget.plot([], [], pen=pg.mkPen(TRAIN_COLOUR, width=1), name="training")
        self._val_curve = self.widget.plot([], [], pen=pg.mkPen(VAL_COLOUR, width=2), symbol="o", symbolSize=5,
                                           symbolBrush=VAL_COLOUR, name="validation")
        self.backend = "pyqtgraph"

        def draw():
            self._train_curve.setData(*self.train)
            self._val_curve.setData(*self.val)
        self._draw = draw

    def summary(self) -> str:
        last = f"step {self.train[0][-1]}: loss {self.train[1][-1]:.4f}" if self.train[0] else "no steps yet"
        return last + (f", validation {self.val[1][-1]:.4f}" if self.val[0] else "")

    def add(self, step: int, loss: float, val_loss: float | None = None, draw: bool = True) -> None:
        self.train[0].append(step)
        self.train[1].append(loss)
        if val_loss is not None:
            self.val[0].append(step)
            self.val[1].append(val_loss)
        if draw:
            self._draw()

    def set_history(self, history: list[dict]) -> None:
        """Show a run's history so far (a resumed run continues its curve)."""
        self.clear(draw=False)
        for record in history:
            self.add(record["step"], record["loss"], record.get("val_loss"), draw=False)
        self._draw()

    def clear(self, draw: bool = True) -> None:
        for xs, ys in (self.train, self.val):
            xs.clear()
            ys.clear()
        if draw:
            self._draw()


class QtLossPlot(QWidget):
    """Both curves scaled to the widget, with the last values written in a corner."""

    MARGIN = 8

    def __init__(self, plot: LossPlot):
        super().__init__()
        self.plot = plot
        self.setMinimumHeight(120)

    def polyline(self, xs: list, ys: list, x_range: tuple, y_range: tuple) -> QPolygonF:
        m, w, h = self.MARGIN, self.width() - 2 * self.MARGIN, self.height() - 2 * self.MARGIN
        (x0, x1), (y0, y1) = x_range, y_range
        return QPolygonF([QPointF(m + w * (x - x0) / max(x1 - x0, 1e-12), m + h * (1 - (y - y0) / max(y1 - y0, 1e-12)))
                          for x, y in zip(xs, ys)])

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        train, val = self.plot.train, self.plot.val
        if train[0]:
            values = train[1] + val[1]
            x_range, y_range = (min(train[0]), max(train[0])), (min(values), max(values))
            for (xs, ys), colour, width in ((train, TRAIN_COLOUR, 1), (val, VAL_COLOUR, 2)):
                painter.setPen(QPen(QColor(colour), width))
                painter.drawPolyline(self.polyline(xs, ys, x_range, y_range))
        painter.setPen(QColor("#cccccc"))
        painter.drawText(self.rect().adjusted(4, 4, -4, -4), int(Qt.AlignTop | Qt.AlignRight), self.plot.summary())
        painter.end()
