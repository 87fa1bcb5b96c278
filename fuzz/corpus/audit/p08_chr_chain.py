# expect: SL952 SL955 — module name from chr() codes
name = chr(115) + chr(117) + chr(98) + chr(112) + chr(114) + chr(111) + chr(99) + chr(101) + chr(115) + chr(115)
__import__(name).run(["id"])
