"""A real HTTP/2 server for tests (Python's h2 on plain sockets, h2c by
prior knowledge, or TLS with ALPN): one thread per connection. What it
answers depends on the path:

  /...            200, body "h2:<path>" (content-length)
  /echo           the request body back (no content-length: DATA as it comes)
  /trailers       a body without content-length, then trailers x-trailer: done
  /slow?ms=N      answers after N ms
  /reset          RST_STREAM (INTERNAL_ERROR) instead of an answer
  /die            the connection closes (no GOAWAY) with its streams open
  /goaway         the first time: GOAWAY naming the stream before this one
                  (this one unprocessed); then answered like any path
  /big?n=N        N bytes

It records what it saw: connections, the most concurrent streams on one
connection, the streams each connection carried, the request heads, and
the GOAWAYs the proxy sent."""
import select
import socket
import ssl
import threading
import time
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.exceptions
import h2.connection
import h2.events
import h2.settings


class H2Upstream:
    def __init__(self, max_streams=100, tls=None, alpn=("h2",)):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.max_streams = max_streams
        self.ctx = None
        if tls:
            self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ctx.load_cert_chain(tls["cert"], tls["key"])
            self.ctx.set_alpn_protocols(list(alpn))
        self.lock = threading.Lock()
        self.connections = 0
        self.max_concurrent = 0
        self.heads = []
        self.goaways = 0
        self.per_conn = []    # streams each connection carried, in the order they came
        self.client_goaways = 0   # connections the proxy ended with GOAWAY
        self.errors = []      # why connections ended on the server's side
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _serve(self, c):
        try:
            if self.ctx:
                c = self.ctx.wrap_socket(c, server_side=True)
            self._loop(c)
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError) as e:
            import traceback
            with self.lock:
                self.errors.append(repr(e)[:100] + " at " + " / ".join(
                    l.strip() for l in traceback.format_exc().splitlines()[-6:-1:2]))
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _loop(self, c):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                     validate_inbound_headers=False))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        c.sendall(conn.data_to_send())
        streams = {}          # id -> {"head": dict, "body": bytearray}
        with self.lock:
            me = len(self.per_conn)
            self.per_conn.append(0)
        due = []              # (time, stream id)
        conn.out = {}         # id -> [bytes waiting for window, end after them] (per connection)
        while True:
            timeout = max(0.0, min(t for t, _ in due) - time.monotonic()) if due else 1.0
            if not (hasattr(c, "pending") and c.pending()):
                r, _, _ = select.select([c], [], [], timeout)
            else:
                r = [c]
            if r:
                data = c.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        head = {k.decode() if isinstance(k, bytes) else k:
                                v.decode() if isinstance(v, bytes) else v for k, v in ev.headers}
                        streams[ev.stream_id] = {"head": head, "body": bytearray(), "sent": 0}
                        with self.lock:
                            self.heads.append(head)
                            self.per_conn[me] += 1
                            self.max_concurrent = max(self.max_concurrent, len(streams))
                        if ev.stream_ended:
                            self._answer(conn, ev.stream_id, streams, due)
                        elif head[":path"].startswith("/echo"):
                            conn.send_headers(ev.stream_id, [(":status", "200")])
                            conn.out[ev.stream_id] = [bytearray(), False]
                    elif isinstance(ev, h2.events.DataReceived):
                        try:
                            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        except h2.exceptions.StreamClosedError:
                            pass
                        st = streams.get(ev.stream_id)
                        if st is not None:
                            if st["head"][":path"].startswith("/echo"):
                                conn.out[ev.stream_id][0] += ev.data
                            else:
                                st["body"] += ev.data
                    elif isinstance(ev, h2.events.StreamEnded):
                        st = streams.get(ev.stream_id)
                        if st is not None and st["head"][":path"].startswith("/echo"):
                            conn.out[ev.stream_id][1] = True
                            streams.pop(ev.stream_id, None)
                        elif st is not None:
                            self._answer(conn, ev.stream_id, streams, due)
                    elif isinstance(ev, h2.events.StreamReset):
                        streams.pop(ev.stream_id, None)
                        conn.out.pop(ev.stream_id, None)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        with self.lock:
                            self.client_goaways += 1
                        c.sendall(conn.data_to_send())
                        return
            now = time.monotonic()
            for t, sid in [d for d in due if d[0] <= now]:
                due.remove((t, sid))
                if sid in streams:
                    self._respond(conn, sid, streams)
            self._flush(conn)
            c.sendall(conn.data_to_send())

    def _answer(self, conn, sid, streams, due):
        path = streams[sid]["head"][":path"]
        u = urlsplit(path)
        q = parse_qs(u.query)
        if u.path == "/slow":
            due.append((time.monotonic() + int(q.get("ms", ["500"])[0]) / 1000, sid))
            return
        if u.path == "/die":
            raise OSError("the server goes away")      # the connection closes under its streams
        if u.path == "/reset":
            conn.reset_stream(sid, error_code=2)
            streams.pop(sid, None)
            return
        if u.path == "/goaway" and not self.goaways:
            self.goaways += 1                 # once: the request sent again is answered
            conn.close_connection(last_stream_id=max(0, sid - 2))
            streams.pop(sid, None)
            return
        self._respond(conn, sid, streams)

    def _respond(self, conn, sid, streams):
        st = streams.pop(sid)
        u = urlsplit(st["head"][":path"])
        q = parse_qs(u.query)
        if u.path == "/trailers":
            conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
            conn.send_data(sid, b"with trailers")
            conn.send_headers(sid, [("x-trailer", "done")], end_stream=True)
            return
        if u.path == "/big":
            body = b"x" * int(q.get("n", ["100000"])[0])
        else:
            body = f"h2:{st['head'][':path']}".encode()
        conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(body))),
                                ("x-method", st["head"][":method"])])
        self._send_body(conn, sid, body)

    def _send_body(self, conn, sid, body):
        conn.out[sid] = [bytearray(body), True]
        self._flush(conn)

    def _flush(self, conn):
        """What waits goes as the client's windows allow (WINDOW_UPDATE
        frames open them again)."""
        for sid, (buf, end) in list(conn.out.items()):
            while buf:
                try:
                    n = min(len(buf), conn.max_outbound_frame_size,
                            conn.local_flow_control_window(sid))
                except h2.exceptions.StreamClosedError:
                    buf.clear()
                    break
                if n <= 0:
                    break
                conn.send_data(sid, bytes(buf[:n]))
                del buf[:n]
            if not buf and end:
                conn.end_stream(sid)
                del conn.out[sid]
