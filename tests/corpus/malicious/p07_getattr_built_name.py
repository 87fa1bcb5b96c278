# expect: SL955 SL202 — attribute name built at run time
import os

getattr(os, "sys" + "tem")("id")
