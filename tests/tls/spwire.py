"""Speaking to the collector without nng: the SP (scalability protocols) wire
format nng uses over TCP and ipc, and a minimal protobuf writer/reader for
proto/canopy/v1/canopy.proto. Tests use it to send exactly the bytes they
want: oversized lengths, junk, half-finished handshakes, floods.

SP over TCP: each side sends an 8-byte header 00 'S' 'P' 00 <proto:2 BE> 00 00,
then messages as <length:8 BE><payload>. A REQ payload starts with a 4-byte
request id with the high bit set; the REP reply echoes it. Over ipc each
message has a 1-byte type (1) before the length.
"""
import socket
import struct

PROTO_REQ, PROTO_REP = 0x30, 0x31
REASONS = ["ok", "duplicate", "malformed", "unsupported_version", "index_out_of_range", "limit_exceeded",
           "too_large", "invalid", "overloaded", "shutting_down", "internal"]


# ---- protobuf writer ---------------------------------------------------------

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def f_varint(field, n):
    return varint(field << 3) + varint(n)


def f_bytes(field, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(field << 3 | 2) + varint(len(data)) + data


def agent(service="hostile", instance="hostile-1@test", session=1):
    return f_bytes(1, service) + f_bytes(2, instance) + f_varint(4, 1) + f_varint(6, session)


def snapshot(task, segment, seq, frames, time_ms=1700000000000):
    out = f_varint(1, task) + f_varint(2, segment) + f_varint(3, time_ms + seq) + f_varint(4, seq)
    if frames:
        out += f_bytes(5, b"".join(varint(f) for f in frames))
    return out


def batch_request(batch_seq, strings, snaps, **ident):
    body = f_varint(1, batch_seq) + b"".join(f_bytes(2, s) for s in strings) + b"".join(f_bytes(3, s) for s in snaps)
    return f_varint(1, 1) + f_bytes(2, agent(**ident)) + f_bytes(3, body)


def simple_batch(batch_seq=0, n_snapshots=1, n_frames=2, frame_len=10, extra_strings=0, **ident):
    """Strings: task, segment, frames, then extra ones; every snapshot in one segment."""
    frames = ["f%d" % i + "x" * max(0, frame_len - 2) for i in range(n_frames)]
    strings = ["task-hostile", "seg-%d" % batch_seq] + frames + ["extra-%d" % i for i in range(extra_strings)]
    snaps = [snapshot(0, 1, i, list(range(2, 2 + n_frames))) for i in range(n_snapshots)]
    return batch_request(batch_seq, strings, snaps, **ident)


# ---- protobuf reader (Reply) -----------------------------------------------------

def _read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def parse_reply(buf):
    """{'reason': name, 'retryable': bool, 'detail': str, 'batch_seq': int}"""
    out = {"reason": "ok", "retryable": False, "detail": "", "batch_seq": 0}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
            if field == 1:
                out["reason"] = REASONS[v] if v < len(REASONS) else str(v)
            elif field == 2:
                out["retryable"] = bool(v)
            elif field == 4:
                out["batch_seq"] = v
        elif wire == 2:
            n, i = _read_varint(buf, i)
            if field == 3:
                out["detail"] = buf[i:i + n].decode(errors="replace")
            i += n
        else:
            raise ValueError("unexpected wire type %d" % wire)
    return out


# ---- SP client --------------------------------------------------------------------

class SPClient:
    """One REQ connection over tcp://host:port or ipc:///path, spoken by hand."""

    def __init__(self, url, timeout=5.0, handshake=True, rcvbuf=None):
        if url.startswith("tcp://"):
            host, port = url[6:].rsplit(":", 1)
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                # A small receive window: a peer that does not read stalls the sender sooner.
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, int(port)))
            self.ipc = False
        elif url.startswith("ipc://"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(url[6:])
            self.ipc = True
        else:
            raise ValueError(url)
        self.next_id = 1
        if handshake:
            self.handshake()

    def handshake(self):
        self.sock.sendall(b"\x00SP\x00" + struct.pack(">H", PROTO_REQ) + b"\x00\x00")
        peer = self._recv_exact(8)
        if peer[:4] != b"\x00SP\x00" or struct.unpack(">H", peer[4:6])[0] != PROTO_REP:
            raise ConnectionError("not an SP REP peer: %r" % peer)

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the collector")
            buf += chunk
        return bytes(buf)

    def frame(self, payload, claimed_len=None):
        """The bytes of one message; claimed_len lies about its length."""
        n = len(payload) if claimed_len is None else claimed_len
        return (b"\x01" if self.ipc else b"") + struct.pack(">Q", n) + payload

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, body):
        rid = 0x80000000 | self.next_id
        self.next_id += 1
        self.sock.sendall(self.frame(struct.pack(">I", rid) + body))
        return rid

    def recv_reply(self):
        if self.ipc:
            self._recv_exact(1)
        n = struct.unpack(">Q", self._recv_exact(8))[0]
        payload = self._recv_exact(n)
        return struct.unpack(">I", payload[:4])[0], parse_reply(payload[4:])

    def request(self, body):
        rid = self.send(body)
        got, reply = self.recv_reply()
        if got != rid:
            raise ConnectionError("reply to request %x, expected %x" % (got, rid))
        return reply

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
