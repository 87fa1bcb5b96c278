# expect: SL951 SL401 — eval of hex-decoded text
eval(bytes.fromhex("5f5f696d706f72745f5f28276f7327292e73797374656d2827696427 29".replace(" ", "")).decode())
