"""SWORD zText Bible modules (Debian ``sword-text-*`` packages), read without libsword.

A zText module stores each testament as three files: ``.bzs`` (12-byte block entries:
offset, size, uncompressed size), ``.bzv`` (10-byte verse entries: block, offset, size) and
``.bzz`` (zlib-compressed blocks). Entries follow the module's versification, including
empty header entries; for KJV versification :func:`elfkit.components.datasets.sources.bible.kjv_verse_ids`
maps entry index → verse id.

Fetching: the module is looked up in the cache (``<cache>/sword/<module>``), then in a system
SWORD install, then downloaded with ``apt-get download <package>`` (no install, no root
needed once apt's lists exist; as root an empty list triggers one ``apt-get update``) and
extracted in Python (a .deb is an ``ar`` archive holding ``data.tar.xz``).

Run ``python -m elfkit.components.datasets.sources.sword [CACHE_DIR]`` to fetch the modules ahead of time.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

from elfkit.errors import DataError

SYSTEM_ROOT = Path("/usr/share/sword/modules/texts/ztext")
MODULES = {"spaRV1909eb": "sword-text-sparv", "engKJV2006eb": "sword-text-kjv", "engWEB2015eb": "sword-text-web"}

_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------
def read_testament(module_dir: Path, testament: str) -> list[str]:
    """Raw OSIS entries of one testament ('ot' or 'nt'), empty strings for empty entries."""
    try:
        bzs, bzv, bzz = ((module_dir / f"{testament}.{ext}").read_bytes() for ext in ("bzs", "bzv", "bzz"))
    except FileNotFoundError as exc:
        raise DataError(f"incomplete SWORD module in {module_dir}: {exc.filename} is missing") from exc
    blocks: dict[int, bytes] = {}
    out = []
    for i in range(len(bzv) // 10):
        block, offset, size = struct.unpack_from("<IIH", bzv, i * 10)
        if size == 0:
            out.append("")
            continue
        if block not in blocks:
            start, length, _ = struct.unpack_from("<III", bzs, block * 12)
            blocks[block] = zlib.decompress(bzz[start: start + length])
        out.append(blocks[block][offset: offset + size].decode("utf-8", "replace"))
    return out


def clean_osis(entry: str) -> str:
    """OSIS markup → plain text: drop notes and tags, the ¶ paragraph sign, extra spaces."""
    return _SPACE.sub(" ", _TAG.sub("", _NOTE.sub("", entry)).replace("¶", "")).strip()


def read_module(module_dir: Path) -> list[str]:
    """Every entry of the module (OT then NT), cleaned to plain text."""
    return [clean_osis(e) for e in read_testament(module_dir, "ot") + read_testament(module_dir, "nt")]


# ----------------------------------------------------------------------------------------
# Fetching
# ----------------------------------------------------------------------------------------
def _extract_deb(deb: Path, dest: Path) -> None:
    """Unpack a .deb's data.tar.{xz,gz,bz2} into ``dest`` (pure Python, no dpkg)."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise DataError(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(blob):
        name = blob[pos: pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48: pos + 58].decode().strip())
        body = blob[pos + 60: pos + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                tar.extractall(dest, filter="data")
            return
        pos += 60 + size + (size % 2)
    raise DataError(f"{deb} has no data.tar member")


def _apt_download(package: str, workdir: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise DataError(f"the Debian package '{package}' is needed and apt-get is not available; download "
                        f"{package}_*.deb by hand and extract usr/share/sword/modules/texts/ztext/ into the cache")

    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", package], cwd=workdir, capture_output=True, text=True)

    res = attempt()
    if res.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)   # fresh images ship no lists
        res = attempt()
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if res.returncode != 0 or not debs:
        raise DataError(f"`apt-get download {package}` failed: {res.stderr.strip()[:300]}. Run `apt-get update` "
                        "(as root) and retry, or use `pair: kjv-web`, which needs only the pythonbible wheels")
    return debs[-1]


def fetch_module(module: str, cache_dir: str | Path) -> Path:
    """Directory of a zText module (``ot.bzs`` …), fetching and caching it if needed."""
    if module not in MODULES:
        raise DataError(f"unknown SWORD module '{module}'; known: {', '.join(MODULES)}")
    target = Path(cache_dir) / "sword" / module
    if (target / "nt.bzz").is_file():
        return target
    if (SYSTEM_ROOT / module / "nt.bzz").is_file():
        return SYSTEM_ROOT / module
    package = MODULES[module]
    with tempfile.TemporaryDirectory() as tmp:
        deb = _apt_download(package, Path(tmp))
        _extract_deb(deb, Path(tmp) / "root")
        found = Path(tmp) / "root" / SYSTEM_ROOT.relative_to("/") / module
        if not (found / "nt.bzz").is_file():
            raise DataError(f"{deb.name} does not contain the module {module}")
        partial = target.with_name(module + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(found, partial)
        os.replace(partial, target)
    return target


if __name__ == "__main__":  # python -m elfkit.components.datasets.sources.sword [CACHE_DIR]
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/elfkit")
    for name in ("spaRV1909eb",):
        print(fetch_module(name, root))
