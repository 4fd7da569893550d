"""Carry a CIFAR folder to a machine where it cannot be downloaded, in one small file.

The python-pickle CIFAR-10 folder is 178 MiB of raw pixels; a lent GPU machine takes at most
64 MiB of files per call and reaches no network. :func:`pack` stores every image as a JPEG
(quality 75, 4:2:0: the copy in ../shared was itself decoded from such JPEGs, so re-encoding it
changes a pixel by 0.15 of a level on average) with its label and batch, about 53 MiB for CIFAR-10;
:func:`unpack` writes the standard pickle layout back, which :func:`rewa.data.cifar.load_cifar`
reads as usual. The pack records the mean absolute pixel error of the round trip.

    python -m rewa.data.transport pack /path/to/cifar10 device_data/cifar10.npz
    python -m rewa.data.transport unpack device_data/cifar10.npz device_data/cifar10

Needs Pillow on both ends.
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
from pathlib import Path

import numpy as np

from rewa.data.cifar import _layout, _read_pickle
from rewa.errors import UsageError

QUALITY = 75


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise UsageError("packing CIFAR as JPEG needs Pillow (pip install pillow)") from None
    return Image


def _encode(image_chw: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    _pillow().fromarray(image_chw.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _decode(blob: bytes) -> np.ndarray:
    with _pillow().open(io.BytesIO(blob)) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def pack(data_dir: str | Path, out: str | Path, *, name: str = "cifar10", quality: int = QUALITY):
    """Write ``out`` (.npz): every image of the CIFAR folder ``data_dir`` as a JPEG."""
    layout = _layout(name)
    data_dir = Path(data_dir)
    files = [*layout.train_files, layout.test_file]
    blobs, labels, batch_of, errors = [], [], [], []
    for b, file in enumerate(files):
        content = _read_pickle(data_dir / file)
        images = np.asarray(content[b"data"]).reshape(-1, 3, 32, 32)
        for image in images:
            blob = _encode(image, quality)
            errors.append(np.abs(_decode(blob).astype(np.int16) - image).mean())
            blobs.append(blob)
        labels += list(content[layout.label_key])
        batch_of += [b] * len(images)
    meta = _read_pickle(data_dir / layout.meta_file)
    offsets = np.cumsum([0] + [len(x) for x in blobs])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        jpeg=np.frombuffer(b"".join(blobs), dtype=np.uint8),
        offsets=offsets.astype(np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        batch=np.asarray(batch_of, dtype=np.int64),
        files=np.asarray(files),
        names=np.asarray([n.decode() for n in meta[layout.names_key]]),
        dataset=np.asarray(name),
        quality=np.asarray(quality),
        mean_abs_error=np.asarray(float(np.mean(errors))),
    )
    return {"images": len(blobs), "bytes": out.stat().st_size, "mean_abs_error": np.mean(errors)}


def unpack(packed: str | Path, out_dir: str | Path) -> Path:
    """Write the CIFAR pickle layout of a :func:`pack` file into ``out_dir``; returns it."""
    with np.load(packed) as z:
        jpeg, offsets = z["jpeg"].tobytes(), z["offsets"]
        labels, batch, files = z["labels"], z["batch"], [str(f) for f in z["files"]]
        names, name = [str(n) for n in z["names"]], str(z["dataset"])
    layout = _layout(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = np.stack(
        [_decode(jpeg[offsets[i] : offsets[i + 1]]) for i in range(len(offsets) - 1)]
    ).reshape(len(labels), -1)
    for b, file in enumerate(files):
        rows = np.flatnonzero(batch == b)
        content = {
            b"batch_label": file.encode(),
            layout.label_key: labels[rows].tolist(),
            b"data": np.ascontiguousarray(images[rows]),
            b"filenames": [f"{file}_{i}.jpg".encode() for i in range(len(rows))],
        }
        with open(out_dir / file, "wb") as f:
            pickle.dump(content, f, protocol=4)
    with open(out_dir / layout.meta_file, "wb") as f:
        pickle.dump({layout.names_key: [n.encode() for n in names]}, f, protocol=4)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rewa.data.transport",
        description="Pack a CIFAR folder into one small file of JPEGs, or unpack it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="CIFAR folder -> .npz of JPEGs")
    p.add_argument("data_dir")
    p.add_argument("out")
    p.add_argument("--dataset", default="cifar10", choices=("cifar10", "cifar100"))
    p.add_argument("--quality", type=int, default=QUALITY)
    u = sub.add_parser("unpack", help=".npz of JPEGs -> CIFAR folder")
    u.add_argument("packed")
    u.add_argument("out_dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            facts = pack(args.data_dir, args.out, name=args.dataset, quality=args.quality)
            print(
                f"packed {facts['images']:,} images into {args.out} ({facts['bytes'] / 2**20:.1f} "
                f"MiB), mean absolute pixel error {facts['mean_abs_error']:.3f}"
            )
        else:
            print(f"unpacked into {unpack(args.packed, args.out_dir)}")
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
