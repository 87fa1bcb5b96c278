# expect: SL504 — yaml.load without a safe loader
import yaml

cfg = yaml.load(open("c.yaml"), Loader=yaml.Loader)
