# expect: SL951 SL401 — rot13 + codecs into exec
import codecs

exec(codecs.decode("vzcbeg bf; bf.flfgrz('vq')", "rot13"))
