"""`--cache_latents` on disk: every training image encoded once by the frozen VAE into safetensors shards, read back
row by row (memory-mapped), and reused by a later run with the same VAE and the same data.

A cache folder is named by a hash of what its latents depend on: the VAE's config and weights, the data (a map-style
dataset's fingerprint and length, or a stream's files with their sizes and modification times, or a Hub id), the
image column, the resolution and channels (center crop, no flip: `--cache_latents` refuses random augmentation).
Another VAE or other data is another folder; a run never reads latents made by a different model. The folder is
written under a temporary name and renamed when complete, so a killed run leaves no half cache that a later run
would take; with several processes the local main process of each machine writes it and the others wait.

Each shard `shard-NNNNN.safetensors` holds `latent_parameters` `[n, 2·C, h, w]` (the posterior's mean and
log-variance: a latent is drawn from them at every step, as without the cache) and, for a stream, `labels` `[n]`;
a stream's captions are kept beside it in `shard-NNNNN.json`. A map-style dataset's labels (class ids, caption
indices) come from the dataset at each run, so they are not part of the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator

import torch

CACHE_VERSION = 1
ROWS_PER_SHARD = 1024
META_FILE = "latent_cache.json"


def default_cache_dir() -> str:
    """`$CUSTOM_PIPELINES_LATENT_CACHE`, else `$HF_HOME/custom_pipelines/latents` (beside the Hub cache)."""
    from huggingface_hub import constants

    return os.environ.get("CUSTOM_PIPELINES_LATENT_CACHE") or os.path.join(
        constants.HF_HOME, "custom_pipelines", "latents"
    )


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dataset_source(dataset, image_column: str) -> dict:
    """What identifies a map-style dataset's images: datasets' fingerprint (it follows every processing step)."""
    return {"fingerprint": dataset._fingerprint, "rows": len(dataset), "column": image_column}


def stream_source(args) -> dict:
    """What identifies a stream: its files (path, size, modification time), or the Hub dataset's id and config."""
    from .streaming import expand_shards

    if getattr(args, "train_shards", None):
        files = expand_shards(args.train_shards)
    else:
        root = args.train_data_dir or args.dataset_name
        files = sorted(
            os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names
        ) if os.path.isdir(root) else []  # fmt: skip
    if not files:
        return {"hub": args.dataset_name, "config": args.dataset_config_name, "column": args.image_column}
    return {
        "files": [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files],
        "column": args.image_column,
        "filter": [list(args.class_filter or []), args.max_train_samples],
    }


def cache_key(vae, source: dict, resolution: int) -> str:
    payload = {
        "version": CACHE_VERSION,
        "vae_config": {k: v for k, v in dict(vae.config).items() if not k.startswith("_")},
        "vae_weights": weights_digest(vae),
        "source": source,
        "resolution": resolution,
        "channels": vae.config.in_channels,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def write_cache(folder: str, batches: Iterable[dict], source: dict) -> int:
    """Shards of `batches` (`{"latent_parameters": [n, ...], "labels"?: [n], "captions"?: [str]}`) into `folder`,
    written under a temporary name and renamed when complete; the number of rows."""
    from safetensors.torch import save_file

    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(folder)}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        rows, shard, pending = 0, 0, []
        for batch in _rows_of(batches):
            pending.append(batch)
            if len(pending) == ROWS_PER_SHARD:
                rows += _write_shard(tmp, shard, pending, save_file)
                shard, pending = shard + 1, []
        if pending:
            rows += _write_shard(tmp, shard, pending, save_file)
            shard += 1
        if rows == 0:
            raise ValueError("--cache_latents: the training data holds no image to encode")
        meta = {"version": CACHE_VERSION, "rows": rows, "rows_per_shard": ROWS_PER_SHARD, "shards": shard}
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump({**meta, "source": source}, f)
        try:
            os.rename(tmp, folder)
        except OSError:  # another machine's writer of a shared folder finished first: its cache is the same
            if not os.path.isfile(os.path.join(folder, META_FILE)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _rows_of(batches: Iterable[dict]) -> Iterator[dict]:
    for batch in batches:
        for i in range(len(batch["latent_parameters"])):
            yield {key: value[i] for key, value in batch.items()}


def _write_shard(folder: str, index: int, rows: list[dict], save_file) -> int:
    tensors = {"latent_parameters": torch.stack([r["latent_parameters"] for r in rows]).contiguous()}
    if "labels" in rows[0]:
        tensors["labels"] = torch.tensor([int(r["labels"]) for r in rows], dtype=torch.long)
    save_file(tensors, os.path.join(folder, f"shard-{index:05d}.safetensors"))
    if "captions" in rows[0]:
        with open(os.path.join(folder, f"shard-{index:05d}.json"), "w") as f:
            json.dump([r["captions"] for r in rows], f)
    return len(rows)


class LatentCache(torch.utils.data.Dataset):
    """A cache folder as a map-style dataset of `{"latent_parameters", "labels"[, "captions"]}` rows, each read from
    its memory-mapped shard when asked (one open file per shard and process): memory stays bounded by the batch.
    `labels`: the rows' condition ids from the dataset (map-style); default: the cached ones, else 0."""

    def __init__(self, folder: str, labels: list[int] | None = None):
        with open(os.path.join(folder, META_FILE)) as f:
            meta = json.load(f)
        self.folder, self.rows, self.rows_per_shard = folder, meta["rows"], meta["rows_per_shard"]
        if labels is not None and len(labels) != self.rows:
            raise ValueError(f"the latent cache {folder} holds {self.rows} rows, the dataset {len(labels)}")
        self.labels = labels
        self._handles: dict[int, object] = {}
        self._captions: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return self.rows

    def _handle(self, shard: int):
        from safetensors import safe_open

        if shard not in self._handles:
            path = os.path.join(self.folder, f"shard-{shard:05d}.safetensors")
            self._handles[shard] = safe_open(path, framework="pt")
        return self._handles[shard]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} of a latent cache of {self.rows}")
        shard, row = divmod(index, self.rows_per_shard)
        handle = self._handle(shard)
        item = {"latent_parameters": handle.get_slice("latent_parameters")[row : row + 1][0]}
        if self.labels is not None:
            item["labels"] = int(self.labels[index])
        elif "labels" in handle.keys():
            item["labels"] = int(handle.get_slice("labels")[row : row + 1][0])
        else:
            item["labels"] = 0
        captions_file = os.path.join(self.folder, f"shard-{shard:05d}.json")
        if shard in self._captions or os.path.isfile(captions_file):
            if shard not in self._captions:
                with open(captions_file) as f:
                    self._captions[shard] = json.load(f)
            item["captions"] = self._captions[shard][row]
        return item

    def __getstate__(self) -> dict:  # dataloader workers open their own files
        return {**self.__dict__, "_handles": {}}


def cached_latents(args, accelerator, vae, resolution: int, dataset, labels: list[int] | None = None) -> LatentCache:
    """The training data's latents as a `LatentCache`: reused when a cache of the same VAE and data exists under
    `--latent_cache_dir`, else encoded once (on each machine's local main process; the others wait). `dataset` is a
    map-style dataset (its `labels` passed in) or a stream (labels and captions are cached with the latents)."""
    from accelerate.logging import get_logger

    from .streaming import is_stream

    logger = get_logger(__name__)
    streamed = is_stream(dataset)
    source = stream_source(args) if streamed else dataset_source(dataset, args.image_column)
    root = getattr(args, "latent_cache_dir", None) or default_cache_dir()
    folder = os.path.join(root, cache_key(vae, source, resolution))
    if os.path.isfile(os.path.join(folder, META_FILE)):
        logger.info(f"--cache_latents: reusing {folder} (same VAE and data)", main_process_only=True)
    elif accelerator.is_local_main_process:
        logger.info(f"--cache_latents: encoding the training images once into {folder}")
        batches = _encoded_batches(args, vae, dataset, resolution, accelerator.device, streamed)
        rows = write_cache(folder, batches, source)
        logger.info(f"--cache_latents: {rows} latents written to {folder}")
    accelerator.wait_for_everyone()
    return LatentCache(folder, None if streamed else labels)


ENCODE_BATCH = 64


def _encoded_batches(args, vae, dataset, resolution: int, device, streamed: bool) -> Iterator[dict]:
    from tqdm.auto import tqdm

    from custom_pipelines.data import ImageTransform

    from .streaming import CAPTION_KEY, UNDECODABLE, decode_image

    transform = ImageTransform(resolution, vae.config.in_channels, center_crop=True)
    vae = vae.to(device)

    def encode(images: list, extra: dict) -> dict:
        pixels = torch.stack([transform(image) for image in images]).to(device, vae.dtype)
        with torch.no_grad():
            parameters = vae.encode(pixels).latent_dist.parameters.float().cpu()
        return {"latent_parameters": parameters, **extra}

    if not streamed:
        for start in tqdm(range(0, len(dataset), ENCODE_BATCH), desc="caching latents"):
            yield encode(dataset[start : start + ENCODE_BATCH][args.image_column], {})
        return
    features = dataset.features or {}
    has_labels, has_captions = args.label_column in features, CAPTION_KEY in features
    images, labels, captions, bad = [], [], [], 0
    for example in tqdm(dataset, desc="caching latents (stream)"):
        try:
            images.append(decode_image(example[args.image_column]))
        except UNDECODABLE as err:
            bad += 1
            if bad > args.max_bad_samples:
                raise ValueError(
                    f"{bad} streamed examples could not be decoded, more than --max_bad_samples "
                    f"{args.max_bad_samples} (the last: {type(err).__name__}: {err})"
                ) from err
            continue
        labels.append(int(example[args.label_column]) if has_labels else 0)
        captions.append(example[CAPTION_KEY] if has_captions else None)
        if len(images) == ENCODE_BATCH:
            yield encode(images, _extra(labels, captions, has_captions))
            images, labels, captions = [], [], []
    if images:
        yield encode(images, _extra(labels, captions, has_captions))


def _extra(labels: list[int], captions: list, has_captions: bool) -> dict:
    extra = {"labels": torch.tensor(labels, dtype=torch.long)}
    if has_captions:
        extra["captions"] = list(captions)
    return extra
