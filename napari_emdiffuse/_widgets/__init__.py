"""napari widgets. Each module is small and single-purpose; state lives in evented objects
(:mod:`._state`) apart from the widgets. torch is imported only when work starts."""
