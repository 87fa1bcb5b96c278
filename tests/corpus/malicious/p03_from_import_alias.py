# expect: SL202 — renamed import of os.popen
from os import popen as read_it

read_it("cat /etc/passwd").read()
