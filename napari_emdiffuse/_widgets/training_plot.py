"""A live plot of the training and validation loss: pyqtgraph when installed (fast, interactive),
else matplotlib's Qt canvas, else a text readout. The points are kept here for any backend."""
from __future__ import annotations


class LossPlot:
    """``add(step, loss, val_loss=None)`` appends points; ``widget`` is the QWidget to show."""

    def __init__(self):
        self.train: tuple[list[int], list[float]] = ([], [])
        self.val: tuple[list[int], list[float]] = ([], [])
        self.backend = "text"
        for make in (self._pyqtgraph, self._matplotlib):
            try:
                make()
                break
            except ImportError:
                continue
        else:
            from qtpy.QtWidgets import QLabel

            self.widget = QLabel("")
            self._draw = lambda: self.widget.setText(self._summary())

    def _pyqtgraph(self) -> None:
        import pyqtgraph as pg

        self.widget = pg.PlotWidget()
        self.widget.setMinimumHeight(160)
        self.widget.addLegend(offset=(-10, 10))
        self.widget.setLabel("bottom", "step")
        self.widget.setLabel("left", "loss")
        self._train_curve = self.widget.plot([], [], pen=pg.mkPen("#8ab4f8", width=1), name="training")
        self._val_curve = self.widget.plot([], [], pen=pg.mkPen("#f28b82", width=2), symbol="o", symbolSize=5,
                                           symbolBrush="#f28b82", name="validation")
        self.backend = "pyqtgraph"

        def draw():
            self._train_curve.setData(*self.train)
            self._val_curve.setData(*self.val)
        self._draw = draw

    def _matplotlib(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(4, 2.2), tight_layout=True)
        axes = figure.add_subplot()
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        (train_line,) = axes.plot([], [], lw=1, label="training")
        (val_line,) = axes.plot([], [], "o-", lw=2, ms=3, label="validation")
        axes.legend(loc="upper right")
        self.widget = FigureCanvasQTAgg(figure)
        self.widget.setMinimumHeight(160)
        self.backend = "matplotlib"

        def draw():
            train_line.set_data(*self.train)
            val_line.set_data(*self.val)
            axes.relim()
            axes.autoscale_view()
            self.widget.draw_idle()
        self._draw = draw

    def _summary(self) -> str:
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
