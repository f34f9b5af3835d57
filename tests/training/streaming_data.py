"""Small streaming datasets made by the tests: webdataset tar shards and a parquet Hub-layout folder of digits."""

from __future__ import annotations

import io
import os
import tarfile

from custom_pipelines.data import load_image_dataset


def digits_rows(count: int, resolution: int = 8) -> list[tuple[bytes, int]]:
    """(PNG bytes, label) of the first `count` built-in digits."""
    digits = load_image_dataset("digits", resolution=resolution)
    rows = []
    for i in range(count):
        buffer = io.BytesIO()
        digits[i]["image"].save(buffer, format="PNG")
        rows.append((buffer.getvalue(), int(digits[i]["label"])))
    return rows


def write_tar_shards(folder, rows, num_shards: int, captions: list[str] | None = None) -> str:
    """`rows` spread over `num_shards` webdataset shards `train-0000k.tar` (key.png + key.cls, + key.txt when
    `captions` holds one per row); returns the brace pattern that names them."""
    os.makedirs(folder, exist_ok=True)
    per_shard = -(-len(rows) // num_shards)
    for shard in range(num_shards):
        with tarfile.open(os.path.join(folder, f"train-{shard:05d}.tar"), "w") as tar:
            for i, (png, label) in enumerate(rows[shard * per_shard : (shard + 1) * per_shard]):
                key = f"{shard:05d}_{i:05d}"
                members = [("png", png), ("cls", str(label).encode())]
                if captions is not None:
                    members.append(("txt", captions[shard * per_shard + i].encode()))
                for suffix, data in members:
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return os.path.join(str(folder), f"train-{{00000..{num_shards - 1:05d}}}.tar")


def write_parquet_dataset(folder, rows, num_files: int = 2) -> str:
    """A Hub-layout dataset folder (`data/train-0000k-of-0000n.parquet`, image + label columns)."""
    import datasets

    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": png, "path": None} for png, _ in rows], "label": [label for _, label in rows]},
        features=features,
    )
    for k in range(num_files):
        table.shard(num_files, k, contiguous=True).to_parquet(
            os.path.join(folder, "data", f"train-{k:05d}-of-{num_files:05d}.parquet")
        )
    return str(folder)
