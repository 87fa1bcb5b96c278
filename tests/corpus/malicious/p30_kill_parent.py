# expect: SL921 — kills its parent process
import os
import signal

os.kill(os.getppid(), signal.SIGKILL)
