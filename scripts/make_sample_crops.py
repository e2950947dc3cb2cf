"""Write the ssTEM and FIB-SEM sample crops bundled in napari_emdiffuse/sample_data/.

    python scripts/make_sample_crops.py --shared ../shared/data/em

Run once when the crops change; nothing reads the shared data at run time. The crops are the
centre of each source volume (see sample_data/PROVENANCE.txt).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import tifffile

from napari_emdiffuse.sample_data import FIBSEM, FIBSEM_VOXEL_NM, SSTEM, SSTEM_VOXEL_NM

CROPS = {  # output -> (source file under --shared, (z, y, x) slices, voxel size in nm)
    SSTEM: ("isbi2012_sstem/train-volume.tif",
            (slice(0, 30), slice(128, 384), slice(128, 384)), SSTEM_VOXEL_NM),
    FIBSEM: ("flyem_fibsem_10nm/training_sample1_250cube.tif",
             (slice(93, 157), slice(61, 189), slice(61, 189)), FIBSEM_VOXEL_NM),
}


def write_crop(source: Path, region, voxel_nm, out: Path) -> None:
    crop = tifffile.imread(source)[region]
    z, y, x = voxel_nm
    tifffile.imwrite(out, crop, imagej=True, compression="zlib", resolution=(1 / x, 1 / y),
                     metadata={"unit": "nm", "spacing": z, "axes": "ZYX"})
    print(f"{out.name}: {crop.shape} {crop.dtype}, {out.stat().st_size / 1e6:.2f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default="../shared/data/em", type=Path)
    args = ap.parse_args()
    for out, (name, region, voxel) in CROPS.items():
        write_crop(args.shared / name, region, voxel, out)


if __name__ == "__main__":
    main()
