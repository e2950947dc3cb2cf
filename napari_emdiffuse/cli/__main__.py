"""``python -m napari_emdiffuse.cli``: the same as the ``emdiffuse`` command."""
import sys

from . import main

sys.exit(main())
