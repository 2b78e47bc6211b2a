"""Result directories ``results/<run-id>/`` holding ``config.json``, ``samples.jsonl`` and ``summary.json``.

Runs are resumable: samples are appended one fsync'd JSON line at a time, so an interrupted run loses at
most the line being written, and reopening the same run id with the same config skips finished samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from zoo.errors import UserError

CONFIG_FILE = "config.json"
SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"


class ResultsError(UserError, ValueError):
    """A results directory cannot be used as asked; the message says why and what to do."""


def _canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict[str, Any]) -> str:
    """First 12 hex chars of sha256 over canonical JSON (sorted keys, no whitespace); Paths hash as str."""
    return hashlib.sha256(_canonical_json(config).encode("utf-8")).hexdigest()[:12]


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON (indent 2, sorted keys, non-JSON values such as Paths via str) atomically.

    Readers see either the old file or the complete new one, never a partial write.
    """
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def default_run_id(config: dict[str, Any]) -> str:
    """``<policy>-<config_hash>``: rerunning the same config maps to the same directory, so it resumes."""
    policy = _UNSAFE_ID_CHARS.sub("_", str(config.get("policy", "run"))).strip("._") or "run"
    return f"{policy}-{config_hash(config)}"


def _check_run_id(run_id: str) -> None:
    if not run_id or run_id in (".", "..") or "/" in run_id or "\\" in run_id or "\0" in run_id:
        raise ResultsError(f"invalid --run-id {run_id!r}: must be a single directory name")


class RunDir:
    """One run's result directory. Create with :meth:`RunDir.open`."""

    def __init__(self, path: Path, config_hash: str) -> None:
        self._path = Path(path)
        self._config_hash = config_hash
        self._ids: set[str] = set()
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, root: Path, run_id: str, config: dict[str, Any], provenance: dict[str, str] | None = None,
             allow_stale: bool = False) -> RunDir:
        """Create or resume ``root/run_id``; refuses a directory that holds a different config, or (unless
        ``allow_stale``) one whose ``provenance`` -- the code fingerprint -- differs from this process's."""
        _check_run_id(run_id)
        path = Path(root) / run_id
        h = config_hash(config)
        path.mkdir(parents=True, exist_ok=True)
        cfg_path = path / CONFIG_FILE
        if cfg_path.exists():
            try:
                stored = json.loads(cfg_path.read_text(encoding="utf-8"))
                old = stored.get("config_hash") or config_hash(stored["config"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ResultsError(
                    f"{cfg_path} is unreadable ({type(exc).__name__}); pick another --run-id or --out"
                ) from None
            if old != h:
                raise ResultsError(
                    f"{path} holds a run with config_hash {old} but this config hashes to {h}; "
                    "pick another --run-id or --out"
                )
            made_by = stored.get("provenance") or {}
            if provenance and made_by != provenance and not allow_stale:
                raise ResultsError(
                    f"{path} was made by other code (code {made_by.get('code', 'unrecorded')}, this is "
                    f"{provenance.get('code')}): run into a new --out, or pass --allow-stale to reuse it"
                )
        else:
            atomic_write_json(cfg_path, {"config": config, "config_hash": h, "provenance": provenance or {}})
        run = cls(path, h)
        run.done_ids()  # repairs a truncated samples.jsonl before anything is appended
        return run

    @property
    def path(self) -> Path:
        return self._path

    def lock(self) -> None:
        """Take the directory for this process: a second writer gets one line instead of duplicated rows."""
        import fcntl

        if self._lock_fd is not None:
            return
        fd = os.open(self._path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ResultsError(f"another dynts-bench process is writing {self._path}: wait for it to finish, or "
                               "use another --out") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    @property
    def config_hash(self) -> str:
        return self._config_hash

    @property
    def samples_path(self) -> Path:
        return self._path / SAMPLES_FILE

    @property
    def is_complete(self) -> bool:
        return (self._path / SUMMARY_FILE).exists()

    def _load(self) -> list[dict[str, Any]]:
        """Parse samples.jsonl, dropping (and rewriting the file without) a partial trailing line.

        Only the last line can be partial after a crash; a corrupt line elsewhere is real damage and raises.
        """
        path = self.samples_path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        lines = raw.split(b"\n")
        ends_clean = lines[-1] == b""
        if ends_clean:
            lines.pop()
        rows: list[dict[str, Any]] = []
        repaired = not ends_clean  # a final line without "\n" must be rewritten even if it parses
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if not line.strip():
                repaired = repaired or last
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or "sample_id" not in row:
                    raise ValueError("not a sample row")
            except (ValueError, UnicodeDecodeError):
                if last:
                    repaired = True
                    continue
                raise ResultsError(
                    f"{path} line {i + 1} is not a valid sample row; fix or remove the file to rerun"
                ) from None
            rows.append(row)
        if repaired:
            text = "".join(json.dumps(r, sort_keys=True, default=str, ensure_ascii=False) + "\n" for r in rows)
            atomic_write_text(path, text)
        return rows

    def done_ids(self) -> set[str]:
        """Ids (as str) of samples already recorded."""
        self._ids = {str(r["sample_id"]) for r in self._load()}
        return set(self._ids)

    def samples(self) -> list[dict[str, Any]]:
        return self._load()

    def append_sample(self, row: dict[str, Any]) -> None:
        """Append one row as a JSON line and fsync; refuses a row without ``sample_id`` or with a recorded one."""
        if "sample_id" not in row:
            raise ResultsError("sample row has no 'sample_id'")
        sid = str(row["sample_id"])
        if sid in self._ids:
            raise ResultsError(f"sample_id {sid!r} is already recorded in {self.samples_path}")
        line = (json.dumps(row, sort_keys=True, default=str, ensure_ascii=False) + "\n").encode("utf-8")
        with open(self.samples_path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._ids.add(sid)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self._path / SUMMARY_FILE, summary)

    def __repr__(self) -> str:
        return f"RunDir({str(self._path)!r}, config_hash={self._config_hash!r})"
