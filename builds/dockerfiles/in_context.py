"""The Dockerfile the daemon's BuildKit will read from a tar build context: found
the way it finds it, or refused.

How Docker 20.10.24 gets there with the farm's `docker build --file PATH -`
(docker/cli v20.10.24 cli/command/image/build_buildkit.go; moby v20.10.24
builder/builder-next/builder.go; vendored BuildKit frontend/dockerfile/builder/build.go):

1. The CLI sees a tar on stdin and uploads it as it is ("upload-request"), PATH
   untouched: no cleaning, and no .dockerignore (the CLI reads one only from a
   local directory context).
2. The daemon serves the upload to the frontend as an HTTP context, PATH as the
   `filename` attribute (an empty PATH or "." means "Dockerfile").
3. The frontend copies it to a scratch state with AttemptUnpack: moby's
   pkg/chrootarchive Untar, that is pkg/archive Unpack chrooted in the new
   directory. Each member's name is filepath.Clean-ed; an existing path is
   removed and replaced, unless both are directories (so a later member of a
   name wins); a member beneath a symbolic link lands where the link points,
   within the chroot; a hard link copies what its target is at that moment.
4. It reads PATH from that tree with ReadFile: continuity's fs.RootPath(root,
   PATH) (github.com/containerd/continuity v0.3.0 fs/path.go), which cleans the
   path lexically, follows symbolic links one by one with `..` and absolute
   targets held at the root, and gives up past 255 links; then ioutil.ReadFile.
   If that fails and PATH's last element is "Dockerfile", it reads
   "dockerfile" in the same directory instead (moby/moby#10858).
5. The context's .dockerignore is applied to what COPY and ADD see
   (dockerfile2llb ExcludePatterns on the build context), never to this read:
   a .dockerignore that names the Dockerfile does not hide it from the engine,
   so it is not applied here either.

The tars read here are the farm's own rewrite of an upload (builds/uploads/contexts.py)
or git's archive of a commit: well-formed, so that Python's tarfile and Go's
archive/tar see the same members in them. The farm sends a plain tar whose
first header is a regular one, or a gzip (buildkit.py), which both the CLI's
archive check and the frontend's isArchive know, so the frontend unpacks it
rather than taking the upload itself as the Dockerfile (build.go:
`filename = "context"`).

Whatever this model cannot place (a loop, a link out of the context, a
directory, a device, a file too large, a member the engine's extraction would
fail on) raises UnreadableDockerfile naming PATH and why: the farm then refuses
the build rather than check a text the engine would not read. No Django here.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

# continuity fs/path.go walkLink: `if *linksWalked > 255 { return errTooManyLinks }`
MAX_ROOT_PATH_LINKS = 255
# Linux MAXSYMLINKS: the kernel's limit when a path it resolves (in the chrooted
# extraction, or below the mount root) goes through links.
MAX_KERNEL_LINKS = 40
DEFAULT_NAME = "Dockerfile"


class UnreadableDockerfile(ValueError):
    """The farm cannot tell, or cannot read, the Dockerfile the engine would read; str() says why."""


@dataclass(frozen=True)
class FoundDockerfile:
    """The Dockerfile's bytes, and the path (relative to the context's root, no
    link on the way) of the file they came from: a member of that name added
    at the end of the context is what the engine reads instead."""

    path: str
    data: bytes


@dataclass
class _Node:
    kind: str  # "file", "dir", "link" or "other" (a device, a FIFO)
    target: str = ""  # a link's target, as written
    offset: int = 0  # a file's data in the tar
    size: int = 0


def _clean(path: str) -> str:
    """Go's path.Clean (filepath.Clean on Linux): posixpath.normpath, except that
    Go keeps no leading "//"."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def _join(*parts: str) -> str:
    """filepath.Join: the non-empty parts joined with "/" and cleaned."""
    joined = "/".join(p for p in parts if p)
    return _clean(joined) if joined else ""


def _go_base(path: str) -> str:
    """Go's path.Base: the last element, trailing slashes dropped."""
    path = path.rstrip("/")
    return path[path.rfind("/") + 1 :] if path else "/"


def _go_dir(path: str) -> str:
    """Go's path.Dir: all but the last element (after path.Split), cleaned."""
    return _clean(path[: path.rfind("/") + 1])


class _Tree:
    """The context as BuildKit's unpack leaves it, paths absolute from its root.

    Directories and links (what decides where a path leads) are always kept;
    regular files, devices and FIFOs only at the paths in `tracked`, so that a
    context of 100,000 files costs memory for its directories only. Every path
    looked up is noted in `queried`: if resolving the Dockerfile looked where no
    file was tracked, the caller unpacks again tracking those paths."""

    def __init__(self, tracked: frozenset[str]) -> None:
        self.nodes: dict[str, _Node] = {"/": _Node("dir")}
        self.tracked = tracked
        self.queried: set[str] = set()
        self.reading = False  # looking for the Dockerfile (noted in `queried`), not unpacking
        self.hard_link_sources: set[str] = set()
        self._parents: dict[str, str] = {}  # make_dirs' answers, until a link or a removal changes them

    def get(self, path: str) -> _Node | None:
        if self.reading:
            self.queried.add(path)
        return self.nodes.get(path)

    def resolve(self, path: str, *, follow_last: bool, chroot: bool) -> str:
        """The kernel's resolution of `path` (absolute from the root): each link
        on the way is followed (the last one too if `follow_last`). `chroot`: the
        extraction's chroot holds `..` and absolute targets at the root; outside
        it (ReadFile below the mount root) either leaves the context, which this
        model refuses to guess at. Missing components are kept as they are
        (their existence is the caller's to check)."""
        pending = [p for p in path.split("/") if p]
        pending.reverse()  # popped from the end
        current, links = "/", 0
        while pending:
            part = pending.pop()
            if part == ".":
                continue
            if part == "..":
                if current == "/" and not chroot:
                    raise UnreadableDockerfile("a path in it climbs above the context's root")
                current = posixpath.dirname(current)
                continue
            candidate = current + part if current == "/" else current + "/" + part
            node = self.get(candidate)
            if node is not None and node.kind == "link" and (pending or follow_last):
                links += 1
                if links > MAX_KERNEL_LINKS:
                    raise UnreadableDockerfile("its symbolic links loop (too many levels of links)")
                if node.target.startswith("/"):
                    if not chroot:
                        raise UnreadableDockerfile(f"a symbolic link in it points outside the context ({node.target})")
                    current = "/"
                pending.extend(reversed([p for p in node.target.split("/") if p]))
                continue
            if pending and node is not None and node.kind != "dir":
                raise UnreadableDockerfile(f"{candidate[1:]} is not a directory")
            current = candidate
        return current

    def remove(self, path: str) -> None:
        """os.RemoveAll."""
        if self.nodes.pop(path, None) is not None and path != "/":
            prefix = path + "/"
            for name in [n for n in self.nodes if n.startswith(prefix)]:
                del self.nodes[name]
            self._parents.clear()

    def make_dirs(self, path: str) -> str:
        """os.MkdirAll in the chroot; the directory's resolved path."""
        if (known := self._parents.get(path)) is not None:
            return known
        real = self.resolve(path, follow_last=True, chroot=True)
        node = self.nodes.get(real)
        if node is None:
            if real != "/":
                self.make_dirs(posixpath.dirname(real))
            self.nodes[real] = _Node("dir")
        elif node.kind != "dir":
            raise UnreadableDockerfile(f"the engine could not unpack the context: {real[1:]} is not a directory")
        self._parents[path] = real
        return real

    def add(self, member: tarfile.TarInfo) -> None:
        """One member, as pkg/archive Unpack applies it (dest "/" in its chroot)."""
        name = _clean(member.name)
        if name in (".", "/"):
            if member.isdir():
                return
            raise UnreadableDockerfile("the engine could not unpack the context: a member replaces its root")
        if name == ".." or name.startswith("../"):
            raise UnreadableDockerfile(f"the engine refuses to unpack the context: {member.name!r} is outside it")
        cut = name.rfind("/")
        parent = self.make_dirs("/" + name[:cut] if cut > 0 else "/")
        path = (parent if parent != "/" else "") + "/" + name[cut + 1 :]
        existing = self.nodes.get(path)
        if existing is not None and not (existing.kind == "dir" and member.isdir()):
            self.remove(path)
        if member.isdir():
            self.nodes.setdefault(path, _Node("dir"))
            return
        if member.issym():
            self.nodes[path] = _Node("link", target=member.linkname)
            self._parents.clear()
            return
        if member.islnk():
            node = self._hard_link_source(name, member.linkname)
            if node is None:
                return
        elif member.isreg():
            node = _Node("file", offset=member.offset_data, size=member.size)
        else:
            node = _Node("other")
        if node.kind == "link":
            self._parents.clear()
        if node.kind == "link" or path in self.tracked:
            self.nodes[path] = node

    def _hard_link_source(self, name: str, linkname: str) -> _Node | None:
        """createTarFile: os.Link(filepath.Join("/", linkname), path): link(2)
        follows links on the way to the target, not the target itself. None: a
        file not tracked (nothing to keep)."""
        source = self.resolve(_join("/", linkname), follow_last=False, chroot=True)
        self.hard_link_sources.add(source)
        node = self.nodes.get(source)
        if node is not None and node.kind != "dir":
            return _Node(node.kind, node.target, node.offset, node.size)
        if node is None and source not in self.tracked:
            return None
        what = "missing" if node is None else "a directory"
        raise UnreadableDockerfile(
            f"the engine could not unpack the context: hard link {name} points to {what} ({linkname})"
        )

    def lstat(self, path: str) -> _Node | None:
        """os.Lstat below the mount root: links on the way followed, not the last."""
        return self.get(self.resolve(path, follow_last=False, chroot=False))

    def root_path(self, path: str) -> str:
        """continuity fs.RootPath(root, path), relative to the root."""
        if path == "":
            return "/"
        walked = [0]
        while True:
            before = walked[0]
            path = self._walk_links(path, walked)
            if before == walked[0]:
                cleaned = _join("/", path)
                if path == cleaned:
                    return cleaned
                path = cleaned

    def _walk_link(self, path: str, walked: list[int]) -> tuple[str, bool]:
        if walked[0] > MAX_ROOT_PATH_LINKS:
            raise UnreadableDockerfile("its symbolic links loop (too many links)")
        path = _join("/", path)
        if path == "/":
            return path, False
        node = self.lstat(path)
        if node is None or node.kind != "link":  # "If path does not yet exist, treat as non-symlink"
            return path, False
        walked[0] += 1
        return node.target, True

    def _walk_links(self, path: str, walked: list[int]) -> str:
        cut = path.rfind("/") + 1  # filepath.Split: the directory keeps its trailing "/"
        directory, file = path[:cut], path[cut:]
        if directory == "":
            return self._walk_link(file, walked)[0]
        if file == "":
            if directory == "/":
                return directory
            return self._walk_links(directory[:-1], walked)
        new_dir = self._walk_links(directory, walked)
        new_path, is_link = self._walk_link(_join(new_dir, file), walked)
        if not is_link or new_path.startswith("/"):
            return new_path
        return _join(new_dir, new_path)


def _read(tree: _Tree, tar: BinaryIO, name: str, limit: int) -> FoundDockerfile:
    """ReadFile(ctx, ref, {Filename: name}): RootPath, then ioutil.ReadFile."""
    real = tree.resolve(tree.root_path(name), follow_last=True, chroot=False)
    node = tree.get(real)
    if node is None:
        raise FileNotFoundError(f"{name} does not exist in the build context")
    if node.kind == "dir":
        raise IsADirectoryError(f"{name} is a directory in the build context")
    if node.kind != "file":
        raise UnreadableDockerfile(f"{name} is a device or a FIFO in the build context, not a file")
    if node.size > limit:
        raise UnreadableDockerfile(f"{name} is {node.size} bytes; the limit for a Dockerfile is {limit} bytes")
    tar.seek(node.offset)
    data = tar.read(node.size)
    if len(data) != node.size:
        raise UnreadableDockerfile(f"the build context ends in the middle of {name}")
    return FoundDockerfile(real[1:], data)


def read_dockerfile(context: BinaryIO, path: str, *, limit: int) -> FoundDockerfile:
    """What BuildKit will read as the Dockerfile at `path` (the CLI's --file) in
    the tar `context` (seekable; left at its start), and where. Raises
    UnreadableDockerfile naming `path` and why the farm cannot read it.

    One pass over the tar's headers tracks the files at the path as written;
    where links lead elsewhere, a second pass tracks the paths the first one
    looked at (a third would find nothing new: refused if it would be needed)."""
    name = path if path not in ("", ".") else DEFAULT_NAME
    tracked = _lexical_paths(name)
    try:
        for _ in range(3):
            context.seek(0)
            with tarfile.open(fileobj=context, mode="r:*") as tar:
                tree = _unpacked(tar, tracked)
                try:
                    # A gzip is read through tarfile's own decompressing file object, which seeks.
                    found: FoundDockerfile | Exception = _read_with_fallback(tree, tar.fileobj, name, limit)
                except (FileNotFoundError, IsADirectoryError, UnreadableDockerfile) as exc:
                    found = exc
            needed = tree.queried | tree.hard_link_sources
            if needed <= tracked:
                if isinstance(found, Exception):
                    raise found
                return found
            tracked = tracked | needed
        raise UnreadableDockerfile("the farm cannot tell which file its links lead to")
    except (FileNotFoundError, IsADirectoryError, UnreadableDockerfile) as exc:
        raise UnreadableDockerfile(f"the farm cannot read the Dockerfile {path!r}: {exc}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UnreadableDockerfile(f"the farm cannot read the Dockerfile {path!r}: not a valid tar ({exc})") from None
    finally:
        context.seek(0)


def _lexical_paths(name: str) -> frozenset[str]:
    """The paths the Dockerfile and its lower-case fallback are at where no link
    is on the way, and their directories."""
    paths = set()
    for candidate in (name, _join(_go_dir(name), DEFAULT_NAME.lower())):
        path = _join("/", candidate)
        while path != "/":
            paths.add(path)
            path = posixpath.dirname(path)
    return frozenset(paths)


def _read_with_fallback(tree: _Tree, data: BinaryIO, name: str, limit: int) -> FoundDockerfile:
    try:
        return _read(tree, data, name, limit)
    except (FileNotFoundError, IsADirectoryError, UnreadableDockerfile) as first:
        # build.go: on any error reading a path whose last element is "Dockerfile",
        # read "dockerfile" beside it (moby/moby#10858).
        if _go_base(name) != DEFAULT_NAME:
            raise
        try:
            return _read(tree, data, _join(_go_dir(name), DEFAULT_NAME.lower()), limit)
        except (FileNotFoundError, IsADirectoryError, UnreadableDockerfile):
            raise first from None


def _unpacked(tar: tarfile.TarFile, tracked: frozenset[str]) -> _Tree:
    tree = _Tree(tracked)
    while (member := tar.next()) is not None:
        tar.members.clear()  # not 100,000 TarInfo objects kept
        tree.add(member)
    tree.reading = True
    return tree
