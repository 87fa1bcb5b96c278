# expect: SL951 SL501 — zlib+marshal packed code object
import marshal
import zlib

blob = zlib.decompress(b"x\x9c...")
exec(marshal.loads(blob))
