# expect: SL201 SL202 — reverse shell via pty
import pty

pty.spawn("/bin/sh")
