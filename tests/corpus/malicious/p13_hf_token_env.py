# expect: SL802 — reads the Hub token from the environment
import os

token = os.environ.get("HF_TOKEN")
