# expect: SL103 SL202 — __import__ with a concatenated module name
mod = __import__("o" + "s")
mod.system("id")
