# expect: SL903 — rewrites its own source after verification
with open(__file__, "w") as f:
    f.write("# replaced\n")
