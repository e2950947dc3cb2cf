"""Write the training / validation / test crops of weights/data/ from the source volumes (run once, by hand;
nothing reads the source at run time). See PROVENANCE.txt.

    python weights/data/make_crops.py ../shared/data/em
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).parent


def write(name: str, array, voxel_nm: tuple[float, float, float]) -> None:
    tifffile.imwrite(HERE / name, array, imagej=True, compression="zlib",
                     resolution=(1 / voxel_nm[2], 1 / voxel_nm[1]),
                     metadata={"axes": "ZYX", "unit": "nm", "spacing": voxel_nm[0]})
    print(name, array.shape, (HERE / name).stat().st_size)


def main(source: Path) -> None:
    cube = tifffile.imread(source / "flyem_fibsem_10nm" / "training_sample1_250cube.tif")
    # slices 0-89: disjoint from the bundled sample crop (slices 93-156), which is the validation volume
    write("fibsem_flyem_train.tif", cube[0:90, 0:144, 0:144], (10.0, 10.0, 10.0))
    # slices 160-249: more training data, as far from the validation slices as the first crop
    write("fibsem_flyem_train2.tif", cube[160:250, 0:144, 0:144], (10.0, 10.0, 10.0))
    # test volume (napari_emdiffuse.evaluation.SPLITS): the slices of the validation crop (93-156)
    # below its rows (rows 189-249, all columns): in no training or validation file
    write("fibsem_flyem_test.tif", cube[93:157, 189:250, :], (10.0, 10.0, 10.0))
    sstem = tifffile.imread(source / "isbi2012_sstem" / "train-volume.tif")
    # rows 0-127: disjoint from the bundled sample crop (rows 128-383), which is the training stack
    write("sstem_isbi2012_val.tif", sstem[::3, 0:128, :], (150.0, 4.0, 4.0))
    # test stack: the held-out rows of the sections next to the validation ones (1, 4, ..., 28)
    write("sstem_isbi2012_test.tif", sstem[1::3, 0:128, :], (150.0, 4.0, 4.0))
    # the rest of every section (rows 384-511; rows 128-383 outside columns 128-383) as 128 x 128
    # tiles: more super-resolution training data, still disjoint from the validation rows
    tiles = [sstem[:, 384:512, x:x + 128] for x in range(0, 512, 128)]
    tiles += [sstem[:, y:y + 128, x:x + 128] for y in (128, 256) for x in (0, 384)]
    write("sstem_isbi2012_train_tiles.tif", np.concatenate(tiles), (150.0, 4.0, 4.0))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
