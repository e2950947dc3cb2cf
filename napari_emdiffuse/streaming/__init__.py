"""Restoring volumes larger than memory: chunk by chunk with halos, into OME-Zarr, resumable,
here or on a dask.distributed cluster.

The output is cut into chunks on a fixed lattice (``chunk`` input pixels in Z, Y, X;
:mod:`.lattice`). Each chunk is restored from its block of the input plus ``halo`` pixels of
context on every side in Y and X (clipped at the volume's edge), with the volume's normaliser and
noise seeded by global position (:mod:`..noise`), and only its own region is kept
(:mod:`.chunks`). So a chunk's result depends on the input, the model, the settings, the seed and
the lattice, and on nothing else: not the order chunks run in, how chunks are grouped, which
process or worker ran them, or whether the run was interrupted and resumed. Z never matters
(units are independent); a different Y/X lattice changes pixels near the seams of either lattice
slightly (docs/scaling.md gives the measured size).

Every output field is an OME-Zarr image next to the others (OUTPUT, OUTPUT_std, ...: the names
the CLI uses; the mask a labels image), chunked exactly like the lattice, so a chunk is one
stored object per output, written whole (:mod:`.store`); pyramid levels are added once every
chunk is done. The mean store also holds ``emdiffuse_done``: one element (and one
stored object) per chunk, set to 1 after the chunk's outputs are all written. A run skips chunks
marked done and redoes the others, so a killed run resumes where it stopped and a chunk is never
taken as finished when half-written. The settings that determine the result are recorded in the
mean store's attributes; resuming with other settings is refused. :mod:`.run` runs a job here or
on a cluster (:mod:`.cluster`, imported only when asked: dask.distributed is an optional extra).
"""
from ..results import output_paths
from .chunks import (DEFAULT_CHUNK, ChunkDone, StreamJob, default_halo, open_source, plan_stream, restore_chunk,
                     volume_normalizer, weights_fingerprint)
from .lattice import ChunkGrid
from .run import StreamReport, stream_restore
from .store import (add_pyramids, finished_chunks, open_result, result_layer_data, streamed_fields,
                    streamed_mask_basis)

__all__ = ["ChunkGrid", "StreamJob", "ChunkDone", "StreamReport", "plan_stream", "restore_chunk", "stream_restore",
           "finished_chunks", "open_result", "result_layer_data", "output_paths", "default_halo", "add_pyramids",
           "streamed_fields", "streamed_mask_basis", "open_source", "volume_normalizer", "weights_fingerprint",
           "DEFAULT_CHUNK"]
