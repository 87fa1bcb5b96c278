"""A fake worker whose every string is hostile terminal text: ESC/CSI/OSC sequences, C1 and bidi controls.

Run by tests/fixtures/plain_worker.py as ``python terminal_worker.py MODE MARKER``. It says hello, reads one
request, and answers with the hostile text wherever the caller might show it to a person.
"""

import os
import socket
import sys
import time

import msgpack

from safeloader.ipc.codec import Ext
from safeloader.ipc.framing import recv_frame, send_frame

# Retitle the window, clear the screen, recolour, C1 CSI, right-to-left override, an isolate, zero-width
# space, BOM, a tag character, a line separator.
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b31m\u202eevil\u2066x\u2069\u200b\ufeff\U000e0041\u2028end"


def main():
    mode = sys.argv[1]
    sock = socket.socket(fileno=3)

    def frame(message):
        send_frame(sock, msgpack.packb(message, use_bin_type=True))

    frame({"op": "hello", "version": 1, "pid": os.getpid(), "layers": []})
    recv_frame(sock)
    if mode == "crash":
        # Without the line separator: the caller shows the last *line* of stderr, and U+2028 ends one.
        sys.stderr.write("Fatal " + HOSTILE.replace("\u2028", "") + "\n")
        sys.stderr.flush()
        os._exit(3)
    elif mode == "error":
        for event, n in (("open", 0), ("update", 1), ("close", 2)):
            frame({"op": "progress", "bar": 1, "event": event, "n": n, "total": 2, "desc": "step " + HOSTILE})
        frame({
            "op": "error",
            "kind": "exception",
            "type": "Value" + HOSTILE,
            "message": "bad " + HOSTILE,
            "traceback": "Traceback (most recent call last):\n  line " + HOSTILE + "\n",
            "events": [{"event": "open " + HOSTILE, "detail": HOSTILE, "by": "pipeline"}],
        })
    elif mode == "handle":
        frame({"op": "result", "value": {"kind": "value", "value": msgpack.ExtType(Ext.HANDLE, msgpack.packb([5, "T" + HOSTILE]))}})
    time.sleep(60)


if __name__ == "__main__":
    main()
