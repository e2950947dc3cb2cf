"""The chunk lattice of a streamed run: which output region each chunk holds, and which part of
the input (plus a halo of context in Y and X) it is restored from."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..tasks.base import Geometry, Task


@dataclass(frozen=True)
class ChunkGrid:
    """Chunks of ``chunk`` input pixels (Z, Y, X) over an input of ``shape`` (Z, Y, X).

    ``scale`` is the output's pixels per input pixel in Y and X (super-resolution); ``z_factor``
    the output's slices per input slice spacing (isotropic reconstruction: a chunk of ``chunk[0]``
    gaps holds ``chunk[0] * z_factor`` output slices); ``out_shape`` the whole output's (Z, Y, X)
    shape as the task makes it. ``halo`` is in input pixels.
    """

    shape: tuple[int, int, int]
    chunk: tuple[int, int, int]
    halo: int
    out_shape: tuple[int, int, int]
    scale: int = 1
    z_factor: int = 1

    @classmethod
    def for_task(cls, task: Task, shape, chunk, halo: int, geometry: Geometry) -> "ChunkGrid":
        shape = tuple(int(s) for s in shape)
        return cls(shape, tuple(chunk), int(halo), tuple(task.output_shape(shape, geometry)), geometry.scale,
                   geometry.z_factor)

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.scale, self.z_factor)

    def units(self, task: Task, index) -> list[int]:
        """The task's units (slices, gaps) whose output planes lie in the chunk."""
        region = self.out_region(index)[0]
        geometry = self.geometry
        return [u for u in task.units(self.shape, geometry)
                if region.start <= task.out_planes(u, geometry).start < region.stop]

    @property
    def out_chunks(self) -> tuple[int, int, int]:
        cz, cy, cx = self.chunk
        return cz * self.z_factor, cy * self.scale, cx * self.scale

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(math.ceil(s / c) for s, c in zip(self.out_shape, self.out_chunks))

    def indices(self) -> list[tuple[int, int, int]]:
        return list(itertools.product(*(range(n) for n in self.grid_shape)))

    def out_region(self, index) -> tuple[slice, slice, slice]:
        """The chunk's region of the output."""
        return tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, self.out_chunks, self.out_shape))

    def lateral(self, index) -> tuple[tuple[slice, slice], tuple[int, int], tuple[slice, slice]]:
        """In Y and X: the input window to read (the chunk plus its halo), the window's origin
        in input pixels, and the chunk's part of the window's result (output pixels)."""
        read, origin, keep = [], [], []
        for i, c, s in zip(index[1:], self.chunk[1:], self.shape[1:]):
            a, b = i * c, min((i + 1) * c, s)
            lo, hi = max(a - self.halo, 0), min(b + self.halo, s)
            read.append(slice(lo, hi))
            origin.append(lo)
            keep.append(slice((a - lo) * self.scale, (b - lo) * self.scale))
        return tuple(read), tuple(origin), tuple(keep)
