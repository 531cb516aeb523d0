"""Batched UDP I/O for the relay data path: recvmmsg/sendmmsg through ctypes.

One syscall moves a whole batch of datagrams through one socket. The arrays are
allocated once (:class:`Mmsg`): ``count`` message headers, one iovec each over a
fixed ``size``-byte slot of one buffer, and optionally one sockaddr slot per message
for the source (receive) or destination (send) address. A forwarder receives a batch
into a :class:`Mmsg` and sends the very same slots out (:meth:`Mmsg.relay`): the
payload is never copied in user space.

Everything degrades: when libc has no recvmmsg/sendmmsg (or ctypes is missing),
``AVAILABLE`` is false and callers use ``socket.recv``/``send`` (the engine does).

The module also holds the small socket helpers the data path needs: packed
sockaddr bytes (destinations of a batch) and buffer sizing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct

MSG_DONTWAIT = 0x40
SOCKADDR_SIZE = 28  # sizeof(struct sockaddr_in6), room for either family

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


_HDR = ctypes.sizeof(Mmsghdr)
_W = _HDR // 4                                 # one header in uint32 words
_LEN_AT = Mmsghdr.msg_len.offset // 4          # msg_len as a uint32 index inside one header
_NAMELEN_AT = Msghdr.msg_namelen.offset // 4   # msg_namelen likewise
_IOV = ctypes.sizeof(Iovec)


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.recvmmsg  # noqa: B018 - attribute lookup raises if the symbol is absent
        libc.sendmmsg  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()
AVAILABLE = _LIBC is not None


def sockaddr(ip: str, port: int) -> bytes:
    """The packed ``sockaddr_in``/``sockaddr_in6`` for (ip, port), as the kernel wants it."""
    if ":" in ip:
        return struct.pack("=HHI16sI", socket.AF_INET6, socket.htons(port), 0,
                           socket.inet_pton(socket.AF_INET6, ip), 0)
    return struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port), socket.inet_aton(ip))


def unpack_sockaddr(raw: bytes) -> tuple[str, int]:
    """(ip, port) from packed sockaddr bytes."""
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


class Mmsg:
    """``count`` preallocated messages over one buffer of ``count * size`` bytes.

    ``names``: give every message a sockaddr slot (the source after :meth:`recv`,
    the destination for :meth:`send`); without it the kernel is told nothing about
    addresses, which is what connected sockets want.
    """

    __slots__ = ("count", "size", "buf", "view", "_iov", "_siov", "_hdrs", "_shdrs",
                 "_names", "_hdr_u32", "_siov_u64", "_base", "_sbase",
                 "_names_view", "_recvmmsg", "_sendmmsg", "_dirty")

    def __init__(self, count: int, size: int = 2048, *, names: bool = True) -> None:
        if not AVAILABLE:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available")
        self.count = count
        self.size = size
        self.buf = (ctypes.c_char * (count * size))()
        self.view = memoryview(self.buf).cast("B")
        self._iov = (Iovec * count)()
        self._siov = (Iovec * count)()    # send-side iovecs: same slots, received lengths
        self._hdrs = (Mmsghdr * count)()
        self._shdrs = (Mmsghdr * count)()
        self._names = (ctypes.c_char * (count * SOCKADDR_SIZE))() if names else None
        base = ctypes.addressof(self.buf)
        iov_base = ctypes.addressof(self._iov)
        siov_base = ctypes.addressof(self._siov)
        names_base = ctypes.addressof(self._names) if names else 0
        for i in range(count):
            self._iov[i].iov_base = self._siov[i].iov_base = base + i * size
            self._iov[i].iov_len = size
            for hdrs, iov in ((self._hdrs, iov_base), (self._shdrs, siov_base)):
                h = hdrs[i].msg_hdr
                h.msg_iov = iov + i * _IOV
                h.msg_iovlen = 1
                if names:
                    h.msg_name = names_base + i * SOCKADDR_SIZE
                    h.msg_namelen = SOCKADDR_SIZE
        # Flat integer views of the header arrays: item access on a memoryview is several
        # times cheaper than ctypes attribute access, and it is the per-packet cost.
        self._hdr_u32 = memoryview(self._hdrs).cast("B").cast("I")
        self._siov_u64 = memoryview(self._siov).cast("B").cast("Q")
        self._names_view = memoryview(self._names).cast("B") if names else None
        self._base = ctypes.c_void_p(ctypes.addressof(self._hdrs))
        self._sbase = ctypes.c_void_p(ctypes.addressof(self._shdrs))
        self._recvmmsg = _LIBC.recvmmsg
        self._sendmmsg = _LIBC.sendmmsg
        self._dirty = 0  # headers whose msg_namelen the last receive shrank

    # -- receive ------------------------------------------------------------------
    def recv(self, fd: int, vlen: int = 0) -> int:
        """Receive up to ``vlen`` (default all) datagrams without blocking; the count, or
        -1 (errno in ``ctypes.get_errno()``; EAGAIN when nothing was waiting)."""
        if self._dirty:
            # the kernel shrinks msg_namelen to what it wrote; give the room back
            u32 = self._hdr_u32
            for i in range(self._dirty):
                u32[i * _W + _NAMELEN_AT] = SOCKADDR_SIZE
            self._dirty = 0
        n = self._recvmmsg(fd, self._base, vlen or self.count, MSG_DONTWAIT, None)
        if n > 0 and self._names is not None:
            self._dirty = n
        return n

    def payload(self, i: int) -> memoryview:
        start = i * self.size
        return self.view[start:start + self._hdr_u32[i * _W + _LEN_AT]]

    def source(self, i: int) -> bytes:
        """Message ``i``'s source as packed sockaddr bytes (the family decides the length)."""
        assert self._names_view is not None
        off = i * SOCKADDR_SIZE
        if self._names_view[off] == socket.AF_INET6:
            return bytes(self._names_view[off:off + 28])
        return bytes(self._names_view[off:off + 16])

    def relay(self, in_fd: int, out_fd: int) -> tuple[int, int, int]:
        """Move what ``in_fd`` holds (up to ``count``) out through ``out_fd``, both
        connected: (datagrams sent, datagrams received but not sent, bytes received).
        A receive error other than EAGAIN (an ICMP error on a connected socket) gives
        sent = -1."""
        n = self._recvmmsg(in_fd, self._base, self.count, MSG_DONTWAIT, None)
        if n <= 0:
            if n < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EWOULDBLOCK):
                return -1, 0, 0
            return 0, 0, 0
        u32 = self._hdr_u32
        u64 = self._siov_u64
        total = 0
        for i in range(n):
            size = u32[i * _W + _LEN_AT]
            u64[i * 2 + 1] = size
            total += size
        sent = self._sendmmsg(out_fd, self._sbase, n, MSG_DONTWAIT)
        sent = max(sent, 0)
        return sent, n - sent, total

    # -- send ---------------------------------------------------------------------
    def set_dest(self, i: int, addr: bytes) -> None:
        """Destination of message ``i`` (packed sockaddr) for the next send."""
        assert self._names_view is not None
        off = i * SOCKADDR_SIZE
        self._names_view[off:off + len(addr)] = addr
        self._shdrs[i].msg_hdr.msg_namelen = len(addr)

    def fill(self, i: int, data: bytes, dest: bytes | None = None) -> None:
        """Prepare message ``i`` for :meth:`send`: payload (copied once) and destination."""
        start = i * self.size
        self.view[start:start + len(data)] = data
        self._siov_u64[i * 2 + 1] = len(data)
        if dest is not None:
            self.set_dest(i, dest)

    def send(self, fd: int, start: int, n: int) -> int:
        """Send messages ``start .. start+n-1`` as filled; count sent, or -1."""
        return self._sendmmsg(fd, ctypes.c_void_p(self._sbase.value + start * _HDR), n,
                              MSG_DONTWAIT)


def set_buffers(sock: socket.socket, rcv: int = 0, snd: int = 0) -> int:
    """Raise SO_RCVBUF/SO_SNDBUF; the FORCE variants pass net.core.rmem_max when the
    process may (CAP_NET_ADMIN). Returns the receive buffer the kernel granted."""
    for size, force, plain in ((rcv, _SO_RCVBUFFORCE, socket.SO_RCVBUF),
                               (snd, _SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        if size <= 0:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
