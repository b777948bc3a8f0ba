"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 as host NumPy arrays.

``load(dataset, split)`` returns images as float32 NCHW in [0, 1] (pixel / 255)
and labels as int64. Nothing is normalised here: MNIST and Fashion-MNIST get no
preprocessing at all, and CIFAR-10's per-channel normalisation (``NORMALIZATION``)
is the network's first layer, so that eps-balls stay in [0, 1] pixel space.
Arrays stay on the host; callers move batches with ``gls_np.backend.to_device``.

Where files come from, in order (``docs/data.md`` has the long form):

1. the cache ``data_dir/<dataset>/`` (``default_data_dir``);
2. a read-only mirror (argument ``mirror`` or env ``GLS_NP_DATA_MIRROR``) laid out
   like the cache, whose ``SHA256SUMS`` every copied file must match;
3. the canonical download sources in ``SOURCES``, checked against their published md5.

A file entering the cache is hashed while it is written (to a temporary name,
renamed into place only when its checksum matches). A cached file is re-hashed
only when its size or mtime differ from what the dataset's ``.verified`` stamp
recorded; every load still validates the format (magic numbers, shapes, counts,
payload length, gzip CRC), so a bad file raises ``DataError`` instead of yielding
a partial dataset.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import http.client
import io
import operator
import os
import pickle
import struct
import tarfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .backend import make_rng, np

DATASETS = ("mnist", "fashion-mnist", "cifar10")

# Per-channel mean and std of the CIFAR-10 training images (over pixel / 255),
# as measured on the staged mirror; they equal the widely published values.
NORMALIZATION = {
    "cifar10": (
        (0.49139968, 0.48215841, 0.44653091),
        (0.24703223, 0.24348513, 0.26158784),
    ),
}

CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}  # fmt: skip

_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
_COUNTS = {
    "mnist": {"train": 60000, "test": 10000},
    "fashion-mnist": {"train": 60000, "test": 10000},
    "cifar10": {"train": 50000, "test": 10000},
}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_CIFAR_FOLDER = "cifar10/cifar-10-batches-py"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_BATCH = 10000
_STAMP = ".verified"
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0


class DataError(ValueError):
    """A dataset file is missing, unreadable, malformed or fails its checksum."""


@dataclass(frozen=True)
class Source:
    """Canonical download location of one dataset.

    Attributes
    ----------
    urls : tuple of str
        Tried in order. For IDX datasets each is a base URL the file name is
        appended to; for CIFAR-10 each is the URL of the whole archive.
    md5 : dict
        Published md5 of each file as it lies in the cache, by file name.
    archive_md5 : str or None
        Published md5 of the archive (CIFAR-10 only).
    """

    urls: tuple[str, ...]
    md5: dict[str, str]
    archive_md5: str | None = None


# md5s as published by the dataset authors (and checked by torchvision).
SOURCES = {
    "mnist": Source(
        urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": Source(
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": Source(
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
        },
        archive_md5="c58f30108f718f92721af3b95e74349a",
    ),
}


# ------------------------------------------------------------------ metadata


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")


def input_shape(dataset: str) -> tuple[int, int, int]:
    """Shape ``(C, H, W)`` of one image of ``dataset``."""
    _check_dataset(dataset)
    return _SHAPES[dataset]


def num_classes(dataset: str) -> int:
    """Return the number of classes of ``dataset`` (10 for all three)."""
    _check_dataset(dataset)
    return len(CLASS_NAMES[dataset])


def default_data_dir() -> Path:
    """Return the dataset cache folder used when ``load`` gets no ``data_dir``.

    Env ``GLS_NP_DATA`` if set; else the ``data/`` folder of the source checkout
    (beside the ``gls_np`` package) if it exists; else ``./data`` under the
    current working directory (an installed package has no checkout folder).
    """
    env = os.environ.get("GLS_NP_DATA")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[1] / "data"
    return checkout if checkout.is_dir() else Path.cwd() / "data"


# ------------------------------------------------------------------ parsers


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_bytes(path: Path) -> bytes:
    """Read the file, gunzipped when its name ends in ``.gz`` (which checks the CRC)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable or truncated ({_one_line(exc)})") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped if the name ends in ``.gz``).

    Parameters
    ----------
    path : path-like
        An IDX labels file (magic 0x00000801) or images file (magic 0x00000803).

    Returns
    -------
    numpy.ndarray
        uint8 array with the shape the header declares (read-only view).

    Shapes: labels -> (N,); images -> (N, rows, cols).

    Raises
    ------
    DataError
        On a wrong magic number, a short header, a payload whose length differs
        from the header's shape, or a truncated/corrupt gzip stream.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataError(f"{path}: expected an IDX header, got {len(buf)} bytes")
    magic = int.from_bytes(buf[:4], "big")
    if magic not in (0x801, 0x803):
        raise DataError(
            f"{path}: expected IDX magic 0x00000801 (labels) or 0x00000803 (images), "
            f"got 0x{magic:08x}"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: expected a {header}-byte IDX header, got {len(buf)} bytes")
    shape = struct.unpack(f">{ndim}I", buf[4:header])
    expected = int(np.prod(shape))
    if len(buf) - header != expected:
        raise DataError(
            f"{path}: expected {expected} bytes of data for shape {shape}, got {len(buf) - header}"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(shape)


# The reconstructor NumPy pickles arrays with, obtained without naming its
# private module (numpy.core in 1.x, numpy._core in 2.x).
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]

# Unpickling runs whatever callables a file names, so a batch may only name what
# an array of bytes needs: the original Python 2 batches use the first four,
# batches re-pickled under Python 3 with protocol 2 also ``_codecs.encode``.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("_codecs", "encode"): codecs.encode,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 "python version" batch, plain or gzipped (``.gz``).

    The batch is a pickled dict with ``data`` (uint8, one row of 1024 red,
    1024 green, 1024 blue values per image, each plane row-major 32 x 32) and
    ``labels`` (ints 0..9). Only the globals a NumPy array needs may be named by
    the pickle, so a crafted file cannot run code.

    Returns
    -------
    images : numpy.ndarray
        uint8, NCHW.
    labels : numpy.ndarray
        int64.

    Shapes: images (N, 3, 32, 32), labels (N,).

    Raises
    ------
    DataError
        On an unreadable, truncated or malformed batch.
    """
    path = Path(path)
    buf = _read_bytes(path)
    try:
        # latin1 turns Python 2 str keys into str and leaves the array bytes intact.
        batch = _BatchUnpickler(io.BytesIO(buf), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: expected a pickled CIFAR-10 batch ({_one_line(exc)})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
        and data.shape[1] == 3072
    ):  # fmt: skip
        raise DataError(f"{path}: expected key 'data' holding a uint8 array of shape (N, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: expected key 'labels' holding a list of ints") from exc
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: expected {data.shape[0]} labels, got an array of shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: expected labels in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


# ------------------------------------------------------------------ fetching


def _temp_path(dest: Path) -> Path:
    """Return a unique hidden name beside ``dest`` (same filesystem: the rename is atomic)."""
    return dest.with_name(f".{dest.name}.{os.urandom(4).hex()}.part")


def _stream_to(reader, dest: Path, algo: str, digest: str, source: str) -> None:
    """Copy ``reader`` into ``dest``, hashing on the way; keep it only if the checksum matches.

    The bytes go to a temporary file that is renamed onto ``dest`` after the
    check and deleted otherwise, so ``dest`` is never partial.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(dest)
    h = hashlib.new(algo, usedforsecurity=False)
    try:
        with open(tmp, "xb") as f:
            while chunk := reader.read(_CHUNK):
                h.update(chunk)
                f.write(chunk)
        actual = h.hexdigest()
        if actual != digest.lower():
            raise DataError(
                f"{dest}: {algo} mismatch for the copy of {source}: expected {digest}, got {actual}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _hash_file(path: Path, algos) -> dict[str, str]:
    hashes = {a: hashlib.new(a, usedforsecurity=False) for a in algos}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _urlopen(url: str):
    return urllib.request.urlopen(url, timeout=_TIMEOUT_S)


def download(
    url: str,
    dest: str | os.PathLike,
    digest: str,
    algo: str = "md5",
    opener: Callable = _urlopen,
) -> Path:
    """Download ``url`` to ``dest``, verified against a published checksum.

    Parameters
    ----------
    url : str
        Any URL ``opener`` understands (the default, ``urllib``, also reads ``file://``).
    dest : path-like
        Final location; its folder is created. It appears only once complete and verified.
    digest : str
        Expected hex digest of the downloaded bytes.
    algo : str
        A ``hashlib`` algorithm name.
    opener : callable
        ``opener(url)`` returns a context manager with ``read(n)``.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DataError
        When the download fails, or its checksum differs (the temporary file is deleted).
    """
    dest = Path(dest)
    try:
        with opener(url) as response:
            _stream_to(response, dest, algo, digest, url)
    except (OSError, http.client.HTTPException) as exc:
        raise DataError(f"{url}: download to {dest} failed ({_one_line(exc)})") from exc
    return dest


def _mirror_dir(mirror: str | os.PathLike | None) -> Path | None:
    if mirror is None:
        mirror = os.environ.get("GLS_NP_DATA_MIRROR") or None
    if mirror is None:
        return None
    mirror = Path(mirror).expanduser()
    if not (mirror / "SHA256SUMS").is_file():
        raise DataError(f"{mirror}: expected a dataset mirror folder holding SHA256SUMS")
    return mirror


def _read_sums(mirror: Path) -> dict[str, str]:
    """Parse the mirror's SHA256SUMS (``sha256sum`` output): relative path -> hex digest."""
    path = mirror / "SHA256SUMS"
    sums = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{path}:{lineno}: expected '<sha256>  <relative path>', got {line!r}")
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


class _Stamps:
    """A dataset folder's ``.verified`` file: the cached files already hashed and found good.

    One tab-separated line per file: relative path, size, mtime_ns, checksum. A file
    whose size and mtime still match its line is not hashed again. The stamp is
    only a cache of work done: unreadable lines are ignored and a cache folder
    that cannot be written just gets its files hashed on every load.
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, tuple[int, int, str]] = {}
        self.changed = False
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            return
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit():
                self.entries[parts[0]] = (int(parts[1]), int(parts[2]), parts[3])

    def fresh(self, rel: str, file: Path) -> bool:
        st = file.stat()
        entry = self.entries.get(rel)
        return entry is not None and entry[:2] == (st.st_size, st.st_mtime_ns)

    def record(self, rel: str, file: Path, checksum: str) -> None:
        st = file.stat()
        self.entries[rel] = (st.st_size, st.st_mtime_ns, checksum)
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        text = "".join(f"{rel}\t{s}\t{m}\t{c}\n" for rel, (s, m, c) in sorted(self.entries.items()))
        tmp = _temp_path(self.path)
        try:
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)


def _layouts(dataset: str, name: str) -> tuple[str, ...]:
    """Relative paths a file may have in the cache or mirror, preferred first."""
    if dataset == "cifar10":
        rel = f"{_CIFAR_FOLDER}/{name}"
        return (rel, rel + ".gz")
    return (f"{dataset}/{name}",)


def _known_checksums(dataset: str, rel: str, sums: dict[str, str]) -> dict[str, str]:
    """Collect the checksums known for the file at ``rel``: algo -> hex digest."""
    known = {}
    if rel in sums:
        known["sha256"] = sums[rel]
    md5 = SOURCES[dataset].md5.get(rel.rsplit("/", 1)[-1])
    if md5:
        known["md5"] = md5
    return known


def _verify_cached(path: Path, rel: str, known: dict[str, str], stamps: _Stamps) -> None:
    if stamps.fresh(rel, path) or not known:
        # No checksum known (e.g. gzipped CIFAR batches without the mirror):
        # the format validation at parse time is all the checking there is.
        return
    actual = _hash_file(path, known)
    for algo, digest in known.items():
        if actual[algo] == digest:
            stamps.record(rel, path, f"{algo}:{digest}")
            return
    expected = " or ".join(f"{a} {d}" for a, d in known.items())
    got = ", ".join(f"{a} {d}" for a, d in actual.items())
    raise DataError(
        f"{path}: checksum mismatch, expected {expected}, got {got}; delete it to fetch it again"
    )


def _copy_from_mirror(
    dataset: str, name: str, data_dir: Path, mirror: Path, sums: dict[str, str], stamps: _Stamps
) -> Path | None:
    for rel in _layouts(dataset, name):
        src = mirror / rel
        if not src.is_file():
            continue
        if rel not in sums:
            raise DataError(
                f"{src}: not listed in {mirror / 'SHA256SUMS'}, so it cannot be verified"
            )
        dest = data_dir / rel
        with open(src, "rb") as f:
            _stream_to(f, dest, "sha256", sums[rel], str(src))
        stamps.record(rel, dest, f"sha256:{sums[rel]}")
        return dest
    return None


def _download_idx(dataset: str, name: str, data_dir: Path, stamps: _Stamps, why: str) -> Path:
    source = SOURCES[dataset]
    rel = f"{dataset}/{name}"
    dest, md5 = data_dir / rel, source.md5[name]
    errors = []
    for base in source.urls:
        try:
            download(base + name, dest, md5)
        except DataError as exc:
            errors.append(str(exc))
            continue
        stamps.record(rel, dest, f"md5:{md5}")
        return dest
    raise DataError(
        f"{dest}: not in the cache, {why}, and no download succeeded "
        f"({'; '.join(errors)}); expected md5 {md5}"
    )


def _download_cifar(data_dir: Path, stamps: _Stamps, why: str, first_missing: str) -> None:
    """Fetch the canonical archive and extract every batch the cache lacks, as plain files."""
    source = SOURCES["cifar10"]
    archive = data_dir / "cifar10" / "cifar-10-python.tar.gz"
    errors = []
    for url in source.urls:
        try:
            download(url, archive, source.archive_md5)
            break
        except DataError as exc:
            errors.append(str(exc))
    else:
        raise DataError(
            f"{data_dir / _CIFAR_FOLDER / first_missing}: not in the cache, {why}, and no "
            f"download succeeded ({'; '.join(errors)}); expected archive md5 {source.archive_md5}"
        )
    names = [
        n for n in _CIFAR_FILES["train"] + _CIFAR_FILES["test"]
        if not any((data_dir / rel).is_file() for rel in _layouts("cifar10", n))
    ]  # fmt: skip
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                member = f"cifar-10-batches-py/{name}"
                reader = tar.extractfile(member)
                if reader is None:
                    raise KeyError(f"{member} is not a regular file")
                rel = f"{_CIFAR_FOLDER}/{name}"
                _stream_to(reader, data_dir / rel, "md5", source.md5[name], f"{archive}:{member}")
                stamps.record(rel, data_dir / rel, f"md5:{source.md5[name]}")
    except (tarfile.TarError, KeyError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{archive}: unreadable CIFAR-10 archive ({_one_line(exc)})") from exc
    finally:
        # The extracted batches are what the cache keeps; the archive would double its size.
        archive.unlink(missing_ok=True)


def _resolve(dataset: str, names, data_dir: Path, mirror: Path | None) -> list[Path]:
    """Return the cached paths of ``names``, copying or downloading missing ones."""
    sums = _read_sums(mirror) if mirror else {}
    stamps = _Stamps(data_dir / dataset / _STAMP)
    found: dict[str, Path] = {}
    try:
        for name in names:
            for rel in _layouts(dataset, name):
                if (data_dir / rel).is_file():
                    _verify_cached(
                        data_dir / rel, rel, _known_checksums(dataset, rel, sums), stamps
                    )
                    found[name] = data_dir / rel
                    break
        for name in names:
            if name not in found and mirror is not None:
                path = _copy_from_mirror(dataset, name, data_dir, mirror, sums, stamps)
                if path is not None:
                    found[name] = path
        missing = [n for n in names if n not in found]
        why = f"not in the mirror {mirror}" if mirror else "no mirror set (GLS_NP_DATA_MIRROR)"
        if dataset == "cifar10" and missing:
            _download_cifar(data_dir, stamps, why, missing[0])
            found.update({n: data_dir / _layouts(dataset, n)[0] for n in missing})
        else:
            for name in missing:
                found[name] = _download_idx(dataset, name, data_dir, stamps, why)
    finally:
        stamps.save()
    return [found[n] for n in names]


# ------------------------------------------------------------------ loading


def load(
    dataset: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    mirror: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of a dataset as float32 images in [0, 1] and int64 labels.

    Parameters
    ----------
    dataset : str
        One of ``DATASETS``.
    split : str
        ``"train"`` or ``"test"``.
    data_dir : path-like, optional
        The cache folder; default ``default_data_dir()``.
    mirror : path-like, optional
        A read-only folder laid out like the cache with a ``SHA256SUMS`` file;
        default env ``GLS_NP_DATA_MIRROR`` (unset or empty: no mirror).

    Returns
    -------
    x : numpy.ndarray
        float32 pixel / 255, NCHW, on the host.
    y : numpy.ndarray
        int64 class indices in 0..9.

    Shapes: x (N, C, H, W) with (C, H, W) = ``input_shape(dataset)``, y (N,);
    N = 60000/10000 (MNIST, Fashion-MNIST) or 50000/10000 (CIFAR-10) for train/test.

    Raises
    ------
    DataError
        A file is missing and cannot be fetched, fails its checksum, or is malformed.
    """
    _check_dataset(dataset)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    mirror = _mirror_dir(mirror)
    n = _COUNTS[dataset][split]
    if dataset == "cifar10":
        paths = _resolve(dataset, _CIFAR_FILES[split], data_dir, mirror)
        images = np.empty((n, 3, 32, 32), dtype=np.uint8)
        labels = np.empty(n, dtype=np.int64)
        for i, path in enumerate(paths):
            xb, yb = read_cifar_batch(path)
            if len(yb) != _CIFAR_BATCH:
                raise DataError(f"{path}: expected {_CIFAR_BATCH} images, got {len(yb)}")
            images[i * _CIFAR_BATCH : (i + 1) * _CIFAR_BATCH] = xb
            labels[i * _CIFAR_BATCH : (i + 1) * _CIFAR_BATCH] = yb
    else:
        image_path, label_path = _resolve(dataset, _IDX_FILES[split], data_dir, mirror)
        images, raw_labels = read_idx(image_path), read_idx(label_path)
        if images.shape != (n, 28, 28):
            raise DataError(
                f"{image_path}: expected images of shape {(n, 28, 28)}, got {images.shape}"
            )
        if raw_labels.shape != (n,):
            raise DataError(
                f"{label_path}: expected labels of shape {(n,)}, got {raw_labels.shape}"
            )
        if raw_labels.max() > 9:
            raise DataError(f"{label_path}: expected labels in 0..9, got {raw_labels.max()}")
        images = images.reshape(n, 1, 28, 28)
        labels = raw_labels.astype(np.int64)
    x = images.astype(np.float32)
    x /= np.float32(255)
    return x, labels


# ------------------------------------------------------------------ splitting and batching


def train_val_split(
    x: np.ndarray, y: np.ndarray, val_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ``val_size`` random examples as a validation set.

    The held-out indices are the first ``val_size`` of a permutation drawn from
    ``make_rng(seed)``, so the split depends only on N, ``val_size`` and ``seed``.
    Both parts keep the original order.

    Returns
    -------
    x_tr, y_tr, x_val, y_val : numpy.ndarray
        Copies.

    Shapes: x (N, ...), y (N,) -> x_tr (N - val_size, ...), y_tr (N - val_size,),
    x_val (val_size, ...), y_val (val_size,).
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y must have the same length, got {n} and {len(y)}")
    val_size = operator.index(val_size)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    perm = make_rng(seed).permutation(n)
    val, train = np.sort(perm[:val_size]), np.sort(perm[val_size:])
    return x[train], y[train], x[val], y[val]


def augment_cifar(x: np.ndarray, rng: np.random.Generator, pad: int = 2) -> np.ndarray:
    """Random crop after zero padding, then random horizontal flip, per image.

    Each image is padded with ``pad`` zeros on every side (black: inputs are
    [0, 1] pixels, normalisation comes later inside the network), a window of
    the original size is cut at a uniform offset in 0..2 pad along each axis,
    and mirrored left-right with probability 1/2. Done as one gather, no loop.

    Shapes: x (N, C, H, W) -> (N, C, H, W), same dtype.
    """
    n, c, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dy = rng.integers(0, 2 * pad + 1, size=n)
    dx = rng.integers(0, 2 * pad + 1, size=n)
    flip = rng.random(n) < 0.5
    rows = dy[:, None] + np.arange(h)
    cols = dx[:, None] + np.arange(w)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[
        np.arange(n)[:, None, None, None],
        np.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool,
    rng: np.random.Generator | None,
    drop_last: bool = False,
    augment: str | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of mini-batches ``(xb, yb)`` as host arrays.

    Parameters
    ----------
    x, y : numpy.ndarray
        Examples and labels.
    batch_size : int
        Examples per batch; the last batch is smaller unless ``drop_last``.
    shuffle : bool
        Visit the examples in a random order drawn from ``rng`` (each exactly once).
    rng : numpy.random.Generator or None
        Source of the order and the augmentation; may be None only when both are off.
    drop_last : bool
        Skip a final batch smaller than ``batch_size``.
    augment : {None, "cifar"}
        ``"cifar"`` applies ``augment_cifar`` to each batch.

    Yields
    ------
    xb, yb : numpy.ndarray
        Without shuffle or augmentation, views into ``x`` and ``y``.

    Shapes: x (N, ...), y (N,) -> xb (B, ...), yb (B,), B <= batch_size.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x and y must have the same length, got {n} and {len(y)}")
    batch_size = operator.index(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if augment not in (None, "cifar"):
        raise ValueError(f"augment must be None or 'cifar', got {augment!r}")
    if rng is None and (shuffle or augment):
        raise ValueError("rng is required when shuffle or augment is set")
    # Drawn now rather than at the first next(), so the rng stream does not
    # depend on when the caller starts iterating.
    order = rng.permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    return _iter_batches(x, y, batch_size, order, stop, rng, augment)


def _iter_batches(x, y, batch_size, order, stop, rng, augment):
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, stop)
        sel = slice(start, end) if order is None else order[start:end]
        xb, yb = x[sel], y[sel]
        if augment == "cifar":
            xb = augment_cifar(xb, rng)
        yield xb, yb
