"""Tests of gls_np.data: the real datasets of the shared mirror, then small made-up files.

The mirror is env ``GLS_NP_DATA_MIRROR`` or ``<repo>/../shared/data``; tests that need
it are skipped only when that folder is absent. No test touches the network: every
download source is pointed at a missing ``file://`` path unless a test sets its own.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from gls_np import data
from gls_np.data import DataError

MIRROR = Path(
    os.environ.get("GLS_NP_DATA_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
needs_mirror = pytest.mark.skipif(
    not MIRROR.is_dir(), reason=f"dataset mirror not found at {MIRROR} (set GLS_NP_DATA_MIRROR)"
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No mirror or cache from the environment, and downloads that fail fast."""
    monkeypatch.delenv("GLS_NP_DATA_MIRROR", raising=False)
    monkeypatch.delenv("GLS_NP_DATA", raising=False)
    nowhere = (tmp_path_factory.getbasetemp() / "no-such-host").as_uri() + "/"
    for name, source in data.SOURCES.items():
        urls = tuple(nowhere + u.rsplit("/", 1)[-1] for u in source.urls)
        monkeypatch.setitem(data.SOURCES, name, dataclasses.replace(source, urls=urls))


def _message(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def _flip_byte(path: Path, offset: int | None = None) -> None:
    buf = bytearray(path.read_bytes())
    buf[len(buf) // 2 if offset is None else offset] ^= 0xFF
    st = path.stat()
    path.write_bytes(bytes(buf))
    # Same size; move the mtime too so the stamp cannot vouch for the file.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _copy_mirror_files(dest: Path, rels) -> None:
    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(MIRROR / rel, dest / rel)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.part")]


MNIST_TEST = ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz")


# ---------------------------------------------------------------- real data


def _summary(x: np.ndarray, y: np.ndarray) -> dict:
    """What the checks need, so the session keeps numbers instead of 1 GB of arrays."""
    n, c, h, w = x.shape
    means, stds = [], []
    for ch in range(c):
        plane = x[:, ch]
        m = plane.mean(dtype=np.float64)
        sq = np.einsum("ijk,ijk->", plane, plane, dtype=np.float64) / (n * h * w)
        means.append(float(m))
        stds.append(float(np.sqrt(sq - m * m)))
    head = x[:1000] * np.float32(255)
    return {
        "shape": x.shape,
        "dtypes": (x.dtype, y.dtype),
        "range": (float(x.min()), float(x.max())),
        "integral": bool(np.abs(head - np.rint(head)).max() < 1e-3),
        "hist": np.bincount(y, minlength=10).tolist(),
        "first": y[:10].tolist(),
        "mean": float(x.mean(dtype=np.float64)),
        "channel_mean": means,
        "channel_std": stds,
    }


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    if not MIRROR.is_dir():
        pytest.skip(f"dataset mirror not found at {MIRROR} (set GLS_NP_DATA_MIRROR)")
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def real(real_cache):
    """summary(dataset, split), loaded once per session through the mirror copy path."""
    memo = {}

    def summary(dataset, split):
        if (dataset, split) not in memo:
            x, y = data.load(dataset, split, data_dir=real_cache, mirror=MIRROR)
            memo[dataset, split] = _summary(x, y)
        return memo[dataset, split]

    return summary


COUNTS = {
    ("mnist", "train"): 60000,
    ("mnist", "test"): 10000,
    ("fashion-mnist", "train"): 60000,
    ("fashion-mnist", "test"): 10000,
    ("cifar10", "train"): 50000,
    ("cifar10", "test"): 10000,
}


@pytest.mark.parametrize(("dataset", "split"), list(COUNTS))
def test_real_counts_shapes_dtypes_range(real, dataset, split):
    s = real(dataset, split)
    assert s["shape"] == (COUNTS[dataset, split], *data.input_shape(dataset))
    assert s["dtypes"] == (np.float32, np.int64)
    assert s["range"] == (0.0, 1.0)
    assert s["integral"]  # x * 255 recovers the stored bytes


@pytest.mark.parametrize(
    ("dataset", "split", "hist", "first"),
    [
        ("mnist", "train",
         [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
         [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]),
        ("mnist", "test",
         [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
         [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]),
        ("fashion-mnist", "train", [6000] * 10, [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]),
        ("fashion-mnist", "test", [1000] * 10, None),
        ("cifar10", "train", [5000] * 10, [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]),
        ("cifar10", "test", [1000] * 10, [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]),
    ],
)  # fmt: skip
def test_real_labels(real, dataset, split, hist, first):
    s = real(dataset, split)
    assert s["hist"] == hist
    if first is not None:
        assert s["first"] == first


@pytest.mark.parametrize(("dataset", "mean"), [("mnist", 0.1307), ("fashion-mnist", 0.2860)])
def test_real_grayscale_train_mean(real, dataset, mean):
    assert real(dataset, "train")["mean"] == pytest.approx(mean, abs=5e-5)


def test_real_cifar_channel_stats_match_normalization(real):
    train, test = real("cifar10", "train"), real("cifar10", "test")
    mean, std = data.NORMALIZATION["cifar10"]
    np.testing.assert_allclose(train["channel_mean"], mean, atol=1e-7)
    np.testing.assert_allclose(train["channel_std"], std, atol=1e-7)
    np.testing.assert_allclose(
        test["channel_mean"], (0.49421428, 0.48513139, 0.45040909), atol=1e-7
    )
    np.testing.assert_allclose(test["channel_std"], (0.24665252, 0.24289226, 0.26159238), atol=1e-7)


def test_cached_files_are_not_hashed_again(real, real_cache, monkeypatch):
    real("mnist", "test")  # makes sure the cache holds it
    assert (real_cache / "mnist" / ".verified").is_file()

    def no_hashing(*args):
        raise AssertionError("a stamped cache file was hashed again")

    monkeypatch.setattr(data, "_hash_file", no_hashing)
    x, y = data.load("mnist", "test", data_dir=real_cache, mirror=MIRROR)
    assert x.shape == (10000, 1, 28, 28) and y[:3].tolist() == [7, 2, 1]


# ---------------------------------------------------------------- real files, corrupted


@needs_mirror
def test_mirror_copy_with_flipped_byte_is_rejected(tmp_path):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    _copy_mirror_files(mirror, MNIST_TEST)
    shutil.copyfile(MIRROR / "SHA256SUMS", mirror / "SHA256SUMS")
    _flip_byte(mirror / MNIST_TEST[1])
    with pytest.raises(DataError, match="sha256 mismatch") as excinfo:
        data.load("mnist", "test", data_dir=cache, mirror=mirror)
    msg = _message(excinfo)
    assert "t10k-labels-idx1-ubyte.gz" in msg
    assert "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6" in msg
    assert not (cache / MNIST_TEST[1]).exists()
    assert (cache / MNIST_TEST[0]).is_file()  # the good file was kept
    assert _leftovers(cache) == []


@needs_mirror
@pytest.mark.parametrize("use_mirror", [False, True])
def test_cached_file_with_flipped_byte_is_rejected(tmp_path, use_mirror):
    cache = tmp_path / "cache"
    _copy_mirror_files(cache, MNIST_TEST)
    mirror = MIRROR if use_mirror else None
    data.load("mnist", "test", data_dir=cache, mirror=mirror)  # hashes and stamps both files
    _flip_byte(cache / MNIST_TEST[1])
    with pytest.raises(DataError, match="checksum mismatch") as excinfo:
        data.load("mnist", "test", data_dir=cache, mirror=mirror)
    msg = _message(excinfo)
    assert str(cache / MNIST_TEST[1]) in msg
    assert "md5 ec29112dd5afa0611ce80d1b7f02629c" in msg
    if use_mirror:
        assert "sha256 f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6" in msg


@needs_mirror
def test_truncated_cached_cifar_batch_is_rejected(tmp_path):
    # Gzipped batches have no published checksum, so without the mirror only the
    # format checks stand between a cut file and a partial dataset.
    cache = tmp_path / "cache"
    rel = "cifar10/cifar-10-batches-py/test_batch.gz"
    (cache / rel).parent.mkdir(parents=True)
    with open(MIRROR / rel, "rb") as f:
        (cache / rel).write_bytes(f.read(1_000_000))
    with pytest.raises(DataError, match="truncated") as excinfo:
        data.load("cifar10", "test", data_dir=cache)
    assert str(cache / rel) in _message(excinfo)


@needs_mirror
def test_read_idx_rejects_truncated_and_corrupt_gzip(tmp_path):
    good = MIRROR / MNIST_TEST[1]
    assert data.read_idx(good).shape == (10000,)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DataError, match="truncated") as excinfo:
        data.read_idx(cut)
    assert "cut.gz" in _message(excinfo)
    bad = tmp_path / "bad.gz"
    shutil.copyfile(good, bad)
    _flip_byte(bad)
    with pytest.raises(DataError) as excinfo:
        data.read_idx(bad)
    assert "bad.gz" in _message(excinfo)


@needs_mirror
def test_download_through_file_urls_falls_back_to_the_second_source(tmp_path, monkeypatch):
    canon, cache = tmp_path / "canon", tmp_path / "cache"
    _copy_mirror_files(canon, MNIST_TEST)  # byte-identical to upstream: md5s match
    source = data.SOURCES["mnist"]
    urls = ((tmp_path / "missing").as_uri() + "/", (canon / "mnist").as_uri() + "/")
    monkeypatch.setitem(data.SOURCES, "mnist", dataclasses.replace(source, urls=urls))
    x, y = data.load("mnist", "test", data_dir=cache)
    assert x.shape == (10000, 1, 28, 28)
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    stamp = (cache / "mnist" / ".verified").read_text()
    assert "md5:9fb629c4189551a2d022fa330f9573f3" in stamp


# ---------------------------------------------------------------- fetching (made-up files)


def test_missing_file_without_mirror_or_network(tmp_path):
    with pytest.raises(DataError, match="no download succeeded") as excinfo:
        data.load("mnist", "test", data_dir=tmp_path)
    msg = _message(excinfo)
    assert "t10k-images-idx3-ubyte.gz" in msg and "no mirror set" in msg
    assert "expected md5 9fb629c4189551a2d022fa330f9573f3" in msg
    with pytest.raises(DataError, match="expected archive md5 c58f30108f718f") as excinfo:
        data.load("cifar10", "train", data_dir=tmp_path)
    assert "data_batch_1" in _message(excinfo)
    assert _leftovers(tmp_path) == []


def test_download_verifies_checksum(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"gls_np" * 1000)
    md5 = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.bin"
    assert data.download(src.as_uri(), dest, md5) == dest
    assert dest.read_bytes() == src.read_bytes()

    other = tmp_path / "out" / "other.bin"
    with pytest.raises(DataError, match="md5 mismatch") as excinfo:
        data.download(src.as_uri(), other, "0" * 32)
    msg = _message(excinfo)
    assert "other.bin" in msg and "expected " + "0" * 32 in msg and f"got {md5}" in msg
    assert not other.exists() and _leftovers(tmp_path) == []

    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert data.download(src.as_uri(), other, sha, algo="sha256").is_file()


def test_download_reports_opener_failure(tmp_path):
    def offline(url):
        raise OSError("network is unreachable")

    with pytest.raises(DataError, match="network is unreachable") as excinfo:
        data.download("https://example.invalid/x.gz", tmp_path / "x.gz", "0" * 32, opener=offline)
    assert "x.gz" in _message(excinfo)


def test_mirror_needs_sha256sums(tmp_path):
    with pytest.raises(DataError, match="SHA256SUMS"):
        data.load("mnist", "test", data_dir=tmp_path / "cache", mirror=tmp_path)


def _cifar_pickle(data_rows: np.ndarray, labels, str_keys: bool) -> bytes:
    keys = ("data", "labels") if str_keys else (b"data", b"labels")
    return pickle.dumps(dict(zip(keys, (data_rows, [int(v) for v in labels]))), protocol=2)


def test_cifar_archive_download_extracts_plain_batches(tmp_path, monkeypatch):
    rows = (np.arange(10000 * 3072) % 251).astype(np.uint8).reshape(10000, 3072)
    labels = np.arange(10000) % 10
    members = {f"data_batch_{i}": f"dummy {i}".encode() for i in range(1, 6)}
    members["test_batch"] = _cifar_pickle(rows, labels, str_keys=False)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name, payload in members.items():
            (tmp_path / name).write_bytes(payload)
            tar.add(tmp_path / name, arcname=f"cifar-10-batches-py/{name}")
    source = data.Source(
        urls=((tmp_path / "missing.tar.gz").as_uri(), archive.as_uri()),
        md5={n: hashlib.md5(p).hexdigest() for n, p in members.items()},
        archive_md5=hashlib.md5(archive.read_bytes()).hexdigest(),
    )
    monkeypatch.setitem(data.SOURCES, "cifar10", source)
    cache = tmp_path / "cache"
    x, y = data.load("cifar10", "test", data_dir=cache)
    assert x.shape == (10000, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8).reshape(10000, -1), rows)
    folder = cache / "cifar10" / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(members)  # plain, not gzipped
    assert not (cache / "cifar10" / "cifar-10-python.tar.gz").exists()
    assert _leftovers(cache) == []
    monkeypatch.setattr(data, "_hash_file", None)  # stamped: a second load does not hash
    np.testing.assert_array_equal(data.load("cifar10", "test", data_dir=cache)[1], labels)


# ---------------------------------------------------------------- parsers (made-up files)


def _idx(magic: int, dims, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def test_read_idx_plain_and_gzipped(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = _idx(0x803, images.shape, images.tobytes())
    (tmp_path / "a.idx").write_bytes(raw)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(raw))
    for name in ("a.idx", "a.idx.gz"):
        np.testing.assert_array_equal(data.read_idx(tmp_path / name), images)
    (tmp_path / "l.idx").write_bytes(_idx(0x801, (3,), b"\x01\x02\x03"))
    assert data.read_idx(tmp_path / "l.idx").tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_idx(0x804, (1, 1, 1, 1), b"\x00"), "expected IDX magic 0x00000801"),
        (_idx(0x801, (5,), b"\x00" * 4), "expected 5 bytes of data"),
        (_idx(0x801, (5,), b"\x00" * 6), "expected 5 bytes of data"),
        (_idx(0x803, (2, 28, 28), b"\x00" * 100), "expected 1568 bytes of data"),
        (b"\x00\x00\x08\x03\x00\x00", "expected a 16-byte IDX header"),
        (b"\x00\x00", "expected an IDX header"),
    ],
)
def test_read_idx_rejects_malformed(tmp_path, raw, match):
    path = tmp_path / "bad-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError, match=match) as excinfo:
        data.read_idx(path)
    assert str(path) in _message(excinfo)


@pytest.mark.parametrize("str_keys", [False, True])
def test_read_cifar_batch(tmp_path, str_keys):
    rows = np.random.default_rng(0).integers(0, 256, (7, 3072), dtype=np.uint8)
    path = tmp_path / "data_batch_1.gz"
    path.write_bytes(gzip.compress(_cifar_pickle(rows, [0, 1, 2, 3, 4, 5, 9], str_keys)))
    images, labels = data.read_cifar_batch(path)
    assert images.shape == (7, 3, 32, 32) and labels.dtype == np.int64
    np.testing.assert_array_equal(images[3, 1], rows[3, 1024:2048].reshape(32, 32))
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 9]


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (pickle.dumps(os.getcwd, protocol=2), "is not allowed"),
        (pickle.dumps([1, 2], protocol=2), "expected a pickled dict"),
        (_cifar_pickle(np.zeros((2, 3071), np.uint8), [0, 1], True), "shape \\(N, 3072\\)"),
        (_cifar_pickle(np.zeros((2, 3072), np.uint8), [0], True), "expected 2 labels"),
        (_cifar_pickle(np.zeros((2, 3072), np.uint8), [0, 10], True), "labels in 0..9"),
        (_cifar_pickle(np.zeros((2, 3072), np.uint8), [0, 1], True)[:-20], "pickled CIFAR-10"),
    ],
)
def test_read_cifar_batch_rejects_malformed(tmp_path, payload, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=match) as excinfo:
        data.read_cifar_batch(path)
    assert str(path) in _message(excinfo)


# ---------------------------------------------------------------- metadata


def test_metadata():
    assert data.DATASETS == ("mnist", "fashion-mnist", "cifar10")
    assert data.input_shape("mnist") == (1, 28, 28)
    assert data.input_shape("fashion-mnist") == (1, 28, 28)
    assert data.input_shape("cifar10") == (3, 32, 32)
    assert all(data.num_classes(d) == 10 for d in data.DATASETS)
    assert set(data.NORMALIZATION) == {"cifar10"}
    with pytest.raises(ValueError, match="unknown dataset"):
        data.input_shape("imagenet")
    with pytest.raises(ValueError, match="split"):
        data.load("mnist", "val")


def test_default_data_dir(monkeypatch, tmp_path):
    assert data.default_data_dir() == Path(data.__file__).resolve().parents[1] / "data"
    monkeypatch.setenv("GLS_NP_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path


# ---------------------------------------------------------------- split, batches, augmentation


def test_train_val_split():
    x = np.arange(100, dtype=np.float32)[:, None] * 10
    y = np.arange(100)
    x_tr, y_tr, x_val, y_val = data.train_val_split(x, y, 20, seed=0)
    assert (len(x_tr), len(y_tr), len(x_val), len(y_val)) == (80, 80, 20, 20)
    assert sorted(np.concatenate([y_tr, y_val]).tolist()) == list(range(100))
    np.testing.assert_array_equal(x_tr[:, 0], y_tr * 10)
    np.testing.assert_array_equal(x_val[:, 0], y_val * 10)
    np.testing.assert_array_equal(data.train_val_split(x, y, 20, seed=0)[3], y_val)
    assert data.train_val_split(x, y, 20, seed=1)[3].tolist() != y_val.tolist()
    assert len(data.train_val_split(x, y, 0, seed=0)[3]) == 0
    for bad in (100, -1):
        with pytest.raises(ValueError, match="val_size"):
            data.train_val_split(x, y, bad, seed=0)


def _epoch(n, batch_size, seed, **kw):
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    y = np.arange(n)
    out = list(data.batches(x, y, batch_size, True, np.random.default_rng(seed), **kw))
    for xb, yb in out:
        np.testing.assert_array_equal(xb.ravel(), yb)
    return [yb for _, yb in out]


def test_batches_shuffle_covers_every_example_once():
    ys = _epoch(23, 5, seed=3)
    assert [len(b) for b in ys] == [5, 5, 5, 5, 3]
    order = np.concatenate(ys)
    assert sorted(order.tolist()) == list(range(23)) and order.tolist() != list(range(23))
    assert np.concatenate(_epoch(23, 5, seed=3)).tolist() == order.tolist()
    assert np.concatenate(_epoch(23, 5, seed=4)).tolist() != order.tolist()
    dropped = _epoch(23, 5, seed=3, drop_last=True)
    assert [len(b) for b in dropped] == [5, 5, 5, 5]
    assert len(set(np.concatenate(dropped).tolist())) == 20


def test_batches_in_order_and_augmented():
    x = np.random.default_rng(0).random((10, 3, 8, 8), dtype=np.float32)
    y = np.arange(10)
    plain = list(data.batches(x, y, 4, False, None))
    assert [yb.tolist() for _, yb in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(plain[1][0], x[4:8])
    aug = list(data.batches(x, y, 4, False, np.random.default_rng(0), augment="cifar"))
    assert [xb.shape for xb, _ in aug] == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    assert not np.array_equal(np.concatenate([xb for xb, _ in aug]), x)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"augment": "mnist"}, "augment"),
        ({"rng": None}, "rng is required"),
        ({"batch_size": 0}, "batch_size"),
        ({"y": np.arange(3)}, "same length"),
    ],
)
def test_batches_rejects_bad_arguments(kw, match):
    args = {"x": np.zeros((4, 1)), "y": np.arange(4), "batch_size": 2, "shuffle": True}
    args["rng"] = np.random.default_rng(0)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        data.batches(**args)


def test_augment_cifar_takes_flipped_crops_of_the_zero_padded_image():
    x = np.random.default_rng(0).random((400, 2, 6, 7), dtype=np.float32) + np.float32(0.5)
    out = data.augment_cifar(x, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(data.augment_cifar(x, np.random.default_rng(1)), out)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    candidates = []
    for dy in range(5):
        for dx in range(5):
            crop = padded[:, :, dy : dy + 6, dx : dx + 7]
            candidates += [crop, crop[..., ::-1]]
    match = np.stack([np.all(c == out, axis=(1, 2, 3)) for c in candidates])  # (50, N)
    assert (match.sum(axis=0) == 1).all()
    which = match.argmax(axis=0)
    assert set((which // 2).tolist()) == set(range(25))  # every offset occurs
    assert 0.4 < (which % 2).mean() < 0.6  # about half are flipped
