"""A FUSE filesystem that loses what was not fsynced when the power is cut.

    python -m tests.faults.lazyfs BACKING MOUNTPOINT [--mode lazy|nosync] [--control FILE]

It passes through to the ``BACKING`` directory, except that written data stays in its
own cache (per file, pages of 4 KiB, and the file's size after writes and truncations)
until that file is fsynced (``fsync`` and ``fdatasync`` alike): then the file's cached
pages and size go to the backing file, which is fsynced before the call returns. Reads
see the cache over the backing file. Names (create, unlink, rename, mkdir) go straight
to the backing directory, as on a journaling filesystem that orders them; a directory
fsync (SQLite's, after creating its journal) is accepted.

A power cut is SIGKILL of this process (with kill -9 of the processes using the
mount, at the same instant): the cache dies with it, what was synced is in the backing
directory, and the mount is lazily unmounted (``fusermount3 -u -z``) before a new one
is made over the same backing directory.

``--mode nosync`` is the negative control, a disk that lies about its write cache:
fsync is acknowledged and does nothing; the cache goes to the backing files only at the
disk's own pace (every ``WRITEBACK`` seconds), so a cut loses up to that much of what
was acknowledged as synced.

``--control FILE``: a file read every 50 ms; its first word injects a disk fault until
it changes: ``enospc-write`` (writes fail with ENOSPC), ``eio-write``, ``eio-fsync``
(fsync fails with EIO and its pages stay cached), ``eio-fsync-drop`` (fsync fails with
EIO and the file's unsynced pages are forgotten, as Linux may do after a failed
writeback: the next fsync succeeds without them), or nothing; a second word limits the
fault to the files whose path contains it (``enospc-write -log``).

``--stats FILE``: rewritten every 50 ms with the bytes a cut would lose now, the
number of files holding some (both leaving out SQLite's ``-shm`` index, never synced
and rebuilt after a crash), and the fsyncs so far.

Each operation takes one lock: slow, simple, and enough for a node's SQLite files.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import mfusepy as fuse  # type: ignore[import-untyped, import-not-found, unused-ignore]

PAGE = 4096
WRITEBACK = 1.0
"""Seconds between two write-backs of the whole cache in ``nosync`` mode."""


@dataclass
class Cached:
    """What was written to a file and not yet synced."""

    size: int
    """The file's size as its users see it."""
    pages: dict[int, bytearray] = field(default_factory=dict)
    truncated_to: int | None = None
    """The smallest size the file was truncated to since its last sync: backing bytes
    past it are gone (zeros) for readers."""


class LazyFS(fuse.Operations):
    """The passthrough filesystem with a cache of unsynced writes."""

    use_ns = True

    def __init__(
        self, backing: str, mode: str = "lazy", control: str | None = None, stats: str | None = None
    ) -> None:
        self.backing = os.path.realpath(backing)
        self.mode = mode
        self.control = control
        self.fault = ""
        self.fault_paths = ""
        self.injected: dict[str, int] = {}
        self.files: dict[str, Cached] = {}
        self.mutex = threading.RLock()
        self.syncs = 0
        if control:
            threading.Thread(target=self._watch_control, daemon=True).start()
        if mode == "nosync":
            threading.Thread(target=self._write_back, daemon=True).start()
        if stats:
            threading.Thread(target=self._report, args=(stats,), daemon=True).start()

    def _report(self, path: str) -> None:
        """Keep ``path`` telling how much is unsynced (what a cut now would lose)."""
        while True:
            with self.mutex:
                # SQLite never syncs its shared-memory index (-shm), rebuilt after a crash.
                files = [c for p, c in self.files.items() if not p.endswith("-shm")]
                pages = sum(len(cached.pages) for cached in files)
                line = f"{pages * PAGE} {len(files)} {self.syncs}\n"
            with open(path + ".new", "w") as out:
                out.write(line)
            os.replace(path + ".new", path)
            time.sleep(0.05)

    def _write_back(self) -> None:
        while True:
            time.sleep(WRITEBACK)
            with self.mutex:
                for path in list(self.files):
                    try:
                        self._sync(path)
                    except FileNotFoundError:
                        self.files.pop(path, None)

    def _watch_control(self) -> None:
        assert self.control is not None
        while True:
            try:
                with open(self.control) as source:
                    words = source.read().split()
            except OSError:
                words = []
            self.fault = words[0] if words else ""
            self.fault_paths = words[1] if len(words) > 1 else ""
            time.sleep(0.05)

    def _faulty(self, path: str, fault: str) -> bool:
        """Whether ``fault`` is injected on ``path`` now (each first time is printed)."""
        if self.fault != fault or self.fault_paths not in path:
            return False
        key = f"{fault} {path}"
        self.injected[key] = self.injected.get(key, 0) + 1
        if self.injected[key] in (1, 10, 100, 1000):
            print(f"lazyfs: injected {key} (#{self.injected[key]})", flush=True)
        return True

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    # -- the cache ------------------------------------------------------------------

    def _base_page(self, path: str, number: int, cached: Cached | None) -> bytearray:
        """A page as the backing file holds it, zeros past a truncation or its end."""
        page = bytearray(PAGE)
        start = number * PAGE
        limit = PAGE
        if cached is not None and cached.truncated_to is not None:
            limit = max(0, min(PAGE, cached.truncated_to - start))
        if limit:
            try:
                fd = os.open(self._real(path), os.O_RDONLY)
            except FileNotFoundError:
                return page
            try:
                data = os.pread(fd, limit, start)
            finally:
                os.close(fd)
            page[: len(data)] = data
        return page

    def _cached(self, path: str) -> Cached:
        cached = self.files.get(path)
        if cached is None:
            cached = Cached(size=os.lstat(self._real(path)).st_size)
            self.files[path] = cached
        return cached

    def _sync(self, path: str) -> None:
        """Write a file's cached pages and size to its backing file, and fsync it."""
        cached = self.files.get(path)
        fd = os.open(self._real(path), os.O_WRONLY)
        try:
            if cached is not None:
                if cached.truncated_to is not None:
                    os.ftruncate(fd, cached.truncated_to)
                for number, page in sorted(cached.pages.items()):
                    start = number * PAGE
                    length = min(PAGE, cached.size - start)
                    if length > 0:
                        os.pwrite(fd, bytes(page[:length]), start)
                os.ftruncate(fd, cached.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.files.pop(path, None)
        self.syncs += 1

    # -- files ----------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self.mutex:
            try:
                st = os.lstat(self._real(path))
            except FileNotFoundError:
                raise fuse.FuseOSError(errno.ENOENT) from None
            attributes = {
                key: getattr(st, key)
                for key in (
                    "st_mode",
                    "st_nlink",
                    "st_uid",
                    "st_gid",
                    "st_size",
                    "st_atime",
                    "st_mtime",
                    "st_ctime",
                )
            }
            cached = self.files.get(path)
            if cached is not None and stat.S_ISREG(st.st_mode):
                attributes["st_size"] = cached.size
            return attributes

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self.mutex:
            fd = os.open(self._real(path), os.O_CREAT | os.O_WRONLY, mode)
            os.close(fd)
            return 0

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            if not os.path.exists(self._real(path)):
                raise fuse.FuseOSError(errno.ENOENT)
            if flags & os.O_TRUNC:
                self._truncate(path, 0)
            return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            cached = self.files.get(path)
            if cached is None:
                fd = os.open(self._real(path), os.O_RDONLY)
                try:
                    return os.pread(fd, size, offset)
                finally:
                    os.close(fd)
            end = min(offset + size, cached.size)
            out = bytearray()
            position = offset
            while position < end:
                number, within = divmod(position, PAGE)
                page = cached.pages.get(number)
                if page is None:
                    page = self._base_page(path, number, cached)
                take = min(PAGE - within, end - position)
                out += page[within : within + take]
                position += take
            return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            if self._faulty(path, "enospc-write"):
                raise fuse.FuseOSError(errno.ENOSPC)
            if self._faulty(path, "eio-write"):
                raise fuse.FuseOSError(errno.EIO)
            cached = self._cached(path)
            position, end = offset, offset + len(data)
            while position < end:
                number, within = divmod(position, PAGE)
                page = cached.pages.get(number)
                if page is None:
                    page = cached.pages[number] = self._base_page(path, number, cached)
                take = min(PAGE - within, end - position)
                page[within : within + take] = data[position - offset : position - offset + take]
                position += take
            cached.size = max(cached.size, end)
            return len(data)

    def _truncate(self, path: str, length: int) -> None:
        cached = self._cached(path)
        cached.size = length
        if cached.truncated_to is None or length < cached.truncated_to:
            cached.truncated_to = length
        last = length // PAGE
        for number in [n for n in cached.pages if n > last or (n == last and length % PAGE == 0)]:
            del cached.pages[number]
        page = cached.pages.get(last)
        if page is not None:
            page[length % PAGE :] = bytes(PAGE - length % PAGE)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.mutex:
            self._truncate(path, length)
            return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:
            if self._faulty(path, "eio-fsync"):
                raise fuse.FuseOSError(errno.EIO)
            if self._faulty(path, "eio-fsync-drop"):
                # Linux after a failed writeback: the pages are no longer dirty, and once
                # evicted what they held is gone; the next fsync succeeds without them.
                self.files.pop(path, None)
                raise fuse.FuseOSError(errno.EIO)
            if self.mode == "nosync":
                return 0  # the lie: acknowledged, still only in the cache
            self._sync(path)
            return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0  # names already went to the backing directory

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        with self.mutex:
            cached = self._cached(path)
            if mode == 0 and offset + size > cached.size:
                cached.size = offset + size
            return 0

    # -- names ----------------------------------------------------------------------

    def unlink(self, path: str) -> int:
        with self.mutex:
            self.files.pop(path, None)
            os.unlink(self._real(path))
            return 0

    def rename(self, old: str, new: str) -> int:
        with self.mutex:
            os.rename(self._real(old), self._real(new))
            self.files.pop(new, None)
            if old in self.files:
                self.files[new] = self.files.pop(old)
            return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is not None:
            os.utime(self._real(path), ns=times)
        else:
            os.utime(self._real(path))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        return {
            key: getattr(st, key)
            for key in (
                "f_bavail",
                "f_bfree",
                "f_blocks",
                "f_bsize",
                "f_favail",
                "f_ffree",
                "f_files",
                "f_flag",
                "f_frsize",
                "f_namemax",
            )
        }


def _unmount_when_orphaned(mountpoint: str) -> None:
    """Unmount and exit when the process that started this one is gone (a harness
    killed without its cleanup leaves no mount behind)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, check=False)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--mode", choices=("lazy", "nosync"), default="lazy")
    parser.add_argument("--control", help="a file whose first word injects a disk fault")
    parser.add_argument(
        "--stats", help="a file kept telling: unsynced bytes, files with some, syncs so far"
    )
    options = parser.parse_args(argv)
    filesystem = LazyFS(options.backing, options.mode, options.control, options.stats)
    threading.Thread(target=_unmount_when_orphaned, args=(options.mountpoint,), daemon=True).start()
    try:
        fuse.FUSE(filesystem, options.mountpoint, foreground=True, nothreads=False)
    except RuntimeError as error:  # libfuse's status when stopped by a signal
        print(f"lazyfs: {options.mountpoint} unmounted ({error})")


if __name__ == "__main__":
    main()
