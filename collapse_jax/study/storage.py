"""A sweep's folder on disk: atomic writes, the manifest, chunk files, the lock.

Layout of a sweep folder ``path``::

    path/manifest.json      what the sweep is (config and its hash, grid labels, replicates)
    path/lock               held while a sweep computes here (``lock-<i>-of-<P>`` for process i of P)
    path/chunks/pPPPPPP-cCCCCCCCC.npz   one finished chunk of grid point P
    path/result.nc          the assembled result

Every file is written atomically (a temporary file beside it, fsync,
``os.replace``), so a killed sweep leaves finished files whole and at most a
``.tmp-*`` file behind. Each chunk file records which chunk it is (grid point,
chunk index, first and one-past-last replicate) and the hash of the sweep's
configuration; :func:`read_chunk` checks both and every field, so a file
copied over another chunk's name, truncated, empty or foreign is never used.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import warnings
from typing import Callable, NamedTuple, Optional

import numpy as np

from collapse_jax.study.streaming import SERIES

__all__ = ["FORMAT", "ChunkError", "ChunkId", "FolderLock", "atomic_write", "writable_folder", "check_folder",
           "make_folder", "chunk_file", "chunk_identity", "save_chunk", "read_chunk", "set_aside", "read_manifest",
           "open_manifest"]

#: Version of the folder layout and of the configuration hashed into it.
FORMAT = 2
_CHUNK_FIELDS = ("n", "mean", "m2", "nonfinite", "min", "max")


class ChunkId(NamedTuple):
    """Which chunk a file holds: grid point, chunk index, replicates ``start .. end - 1``."""

    point: int
    chunk: int
    start: int
    end: int

    def __str__(self) -> str:
        return f"point {self.point} chunk {self.chunk} (replicates {self.start}..{self.end - 1})"


def atomic_write(path: str, write: Callable) -> None:
    """Write via ``write(fileobj)`` to a temporary file beside ``path``, fsync, then ``os.replace``."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def writable_folder(path, label: str = "sweep path") -> str:
    """Return ``path`` as a string if it is, or can be created as, a writable folder; else ``ValueError``
    naming ``label`` (the argument or option, e.g. ``"--out"``) and the path.

    Leaves nothing behind (it probes with a temporary file that is removed at
    once), so callers run it before any computation.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{label} must be a folder name (str or os.PathLike), got {path!r}")
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{label} must not be empty")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{label} {path!r} is a file, not a folder: pass a folder (it is created if missing)")
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{label} {path!r} cannot be created: {probe!r} is a file")
    try:  # a real probe (os.access says yes to root, even on read-only or pseudo file systems)
        with tempfile.TemporaryFile(dir=probe, prefix=".tmp-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"{label} {path!r} is not writable ({probe!r}: {e.strerror or e})") from None
    return path


def check_folder(path) -> str:
    """:func:`writable_folder` for a sweep's ``path``, which must also not hold non-sweep files
    where the sweep writes (``manifest.json``, ``chunks/``, ``result.nc``)."""
    path = writable_folder(path, "sweep path")
    for sub in ("manifest.json", "chunks", "result.nc"):
        file = os.path.join(path, sub)
        if os.path.exists(file) and os.path.isdir(file) != (sub == "chunks"):
            kind = "a folder" if os.path.isdir(file) else "a file"
            raise ValueError(f"sweep path {path!r} is not a sweep folder: {file!r} is {kind}")
    return path


def make_folder(path: str) -> None:
    """Create ``path/chunks``; an ``OSError`` becomes a ``ValueError`` naming the path."""
    try:
        os.makedirs(os.path.join(path, "chunks"), exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the sweep folder {path!r}: {e.strerror or e}") from None


def chunk_file(path: str, point: int, chunk: int) -> str:
    return os.path.join(path, "chunks", f"p{point:06d}-c{chunk:08d}.npz")


def save_chunk(path: str, ident: ChunkId, digest: str, rec: dict) -> None:
    """Write one chunk's record, with its identity and the configuration hash, atomically."""
    atomic_write(chunk_file(path, ident.point, ident.chunk),
                 lambda f: np.savez_compressed(f, format=np.asarray(FORMAT), hash=np.asarray(digest),
                                               ident=np.asarray(tuple(ident), np.int64), **rec))


def chunk_identity(path: str, ident: ChunkId) -> Optional[ChunkId]:
    """Which chunk the file at ``ident``'s name says it holds (reads only that); None if absent or unreadable."""
    file = chunk_file(path, ident.point, ident.chunk)
    if not os.path.exists(file):
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            return ChunkId(*(int(v) for v in np.ravel(z["ident"])))
    except Exception:  # unreadable or malformed: not a finished chunk
        return None


class ChunkError(ValueError):
    """A chunk file that must not be used; ``reason`` says why, ``stale`` marks an outgrown last chunk."""

    def __init__(self, file: str, reason: str, stale: bool = False):
        super().__init__(f"chunk file {file} {reason}")
        self.file, self.reason, self.stale = file, reason, stale


def read_chunk(path: str, ident: ChunkId, digest: str, trajectories: bool) -> dict:
    """Load and check one chunk file; raise :class:`ChunkError` (a ``ValueError``) naming it if bad.

    Bad means: unreadable (garbage, truncated, empty, a failed checksum),
    another configuration's, another chunk's, or missing a field. A chunk
    that is the right one but ends early (``stale=True``) was written when the
    sweep had fewer replicates.
    """
    file = chunk_file(path, ident.point, ident.chunk)
    need = ["level", "index", "hist"] + [f"{s}_{f}" for s in SERIES for f in _CHUNK_FIELDS]
    if trajectories:
        need += [f"{s}_trajectory" for s in SERIES]
    try:
        with np.load(file, allow_pickle=False) as z:
            head = {k: z[k] for k in ("format", "hash", "ident") if k in z.files}
            missing = [k for k in ["format", "hash", "ident"] + need if k not in z.files]
            rec = {k: z[k] for k in need if k in z.files}  # reads every member: checks each one's CRC
    except Exception as e:  # numpy, zipfile and OS errors alike: the file cannot be read
        raise ChunkError(file, f"is unreadable ({type(e).__name__}: {e}): truncated, empty or not a chunk "
                               "file") from None
    if "format" in head and int(head["format"]) != FORMAT:
        raise ChunkError(file, f"has format {int(head['format'])}, expected {FORMAT}")
    if "hash" in head and str(head["hash"]) != digest:
        raise ChunkError(file, f"belongs to another sweep configuration (hash {str(head['hash'])[:12]}, "
                               f"expected {digest[:12]})")
    if "ident" in head:
        got = tuple(int(v) for v in np.ravel(head["ident"]))
        if len(got) != 4:
            raise ChunkError(file, f"has a malformed identity {got}")
        got = ChunkId(*got)
        if got != ident:
            stale = got[:3] == ident[:3]
            raise ChunkError(file, f"holds {got}, not {ident}", stale=stale)
    if missing:
        raise ChunkError(file, f"lacks the fields {missing}")
    return rec


def set_aside(file: str) -> str:
    """Rename a rejected file to ``<file>.rejected`` (or ``.rejected-2``, ...), never over another; return it."""
    n, aside = 1, file + ".rejected"
    while os.path.exists(aside):
        n += 1
        aside = f"{file}.rejected-{n}"
    os.replace(file, aside)
    return aside


class _OtherFormat(Exception):
    """A well-formed manifest of another layout version (``args[0]``)."""


def _manifest_file(path: str) -> str:
    return os.path.join(path, "manifest.json")


def read_manifest(path: str) -> Optional[dict]:
    """The manifest at ``path``, None if there is none; a corrupt one is a ``ValueError`` naming it."""
    file = _manifest_file(path)
    if not os.path.exists(file):
        return None
    try:
        with open(file, "rb") as f:
            meta = json.loads(f.read().decode())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        fmt = meta.get("config", {}).get("format") if isinstance(meta.get("config"), dict) else None
        if isinstance(fmt, int) and fmt != FORMAT:
            raise _OtherFormat(fmt)
        missing = [k for k in ("config", "hash", "replicates", "names", "signatures", "models", "generations")
                   if k not in meta]
        if missing:
            raise ValueError(f"no {missing}")
        if not isinstance(meta["config"], dict) or not isinstance(meta["config"].get("grid"), dict):
            raise ValueError("no config.grid")
    except _OtherFormat as e:
        raise ValueError(f"sweep manifest {file} has format {e.args[0]}, and this collapse_jax reads format "
                         f"{FORMAT}: open it with the collapse_jax that wrote it, or sweep into another folder "
                         "(or delete this one to start over)") from None
    except (OSError, ValueError) as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"sweep manifest {file} is corrupt ({e}): delete it and rerun the same cj.sweep call "
                         "(finished chunks record their configuration and are checked against the call's), "
                         "or delete the folder to start over") from None
    return meta


def open_manifest(path: str, meta: dict) -> None:
    """Create ``path/manifest.json``, or check that the one there describes the same sweep.

    Only the number of replicates may differ from the stored manifest: the
    manifest is then rewritten with the new count (chunks do not depend on it).
    """
    old = read_manifest(path)
    if old is not None:
        if old["hash"] != meta["hash"]:
            new_cfg, old_cfg = meta["config"], old["config"]
            diff = sorted(k for k in set(new_cfg) | set(old_cfg) if old_cfg.get(k) != new_cfg.get(k))
            detail = ", ".join(diff) or "format"
            if "points" in diff and old_cfg.get("grid") == new_cfg["grid"]:
                pts = [i for i, (a, b) in enumerate(zip(old_cfg["points"], new_cfg["points"])) if a != b]
                detail += f" (build returns a different ecosystem, task or options at points {pts[:5]})"
            raise ValueError(f"sweep path {path!r} holds a sweep with a different configuration: {detail} "
                             "differ. Use another path, or delete it to start over.")
        if old == meta:
            return
    atomic_write(_manifest_file(path), lambda f: f.write(json.dumps(meta, indent=1).encode()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """An exclusive lock on a sweep folder: a file created with ``O_EXCL`` holding the pid and host.

    A lock left by a process of this host that no longer runs is taken over
    (with a warning); a live one, or one from another host, is a
    ``ValueError`` naming the lock file. Use as a context manager.
    """

    def __init__(self, path: str, name: str = "lock"):
        self.path, self.file = path, os.path.join(path, name)
        self.held = False

    def _owner(self) -> Optional[dict]:
        """The lock's recorded owner, retried briefly while its creator is still writing it."""
        for _ in range(20):
            try:
                with open(self.file) as f:
                    text = f.read()
            except FileNotFoundError:
                return {}
            try:
                owner = json.loads(text)
                if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
                    return owner
            except ValueError:
                pass
            time.sleep(0.05)
        return None

    def _busy(self, what: str) -> ValueError:
        return ValueError(f"sweep folder {self.path!r} is in use: {what} (lock file {self.file}). Wait for "
                          f"that sweep to finish, or delete {self.file} if it is no longer running.")

    def acquire(self) -> "FolderLock":
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(5):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner == {}:
                    continue  # released meanwhile: try again
                if owner is None:
                    raise self._busy("its lock file is unreadable") from None
                pid, host = owner["pid"], owner.get("host")
                if host != socket.gethostname():
                    raise self._busy(f"held by pid {pid} on host {host}") from None
                if _alive(pid):
                    raise self._busy(f"held by running process {pid}") from None
                # Stale: move it aside (atomic, so only one taker wins), check what we moved, drop it.
                aside = f"{self.file}.stale-{os.getpid()}"
                try:
                    os.replace(self.file, aside)
                except FileNotFoundError:
                    continue
                with open(aside) as f:
                    moved = f.read()
                try:
                    moved = json.loads(moved)
                except ValueError:
                    moved = None
                if moved != owner:
                    os.replace(aside, self.file)  # another taker's fresh lock: put it back
                    continue
                os.remove(aside)
                warnings.warn(f"took over the stale lock {self.file} of process {pid}, which no longer runs",
                              stacklevel=3)
                continue
            except OSError as e:
                raise ValueError(f"cannot create the lock file {self.file}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            return self
        raise self._busy("other processes keep taking the lock")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.file)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
