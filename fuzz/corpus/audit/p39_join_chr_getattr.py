# expect: SL952 SL955 — join(map(chr)) builds "system"
import os

getattr(os, "".join(map(chr, [115, 121, 115, 116, 101, 109])))("id")
