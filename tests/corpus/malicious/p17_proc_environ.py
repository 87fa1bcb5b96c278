# expect: SL803 — other process' environment
data = open("/proc/1/environ", "rb").read()
