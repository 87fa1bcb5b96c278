"""SL3xx: talking to the network, including downloads from the Hub made while the pipeline runs."""

from __future__ import annotations

from safeloader.audit.rules.base import Family, Rule

FAMILY = "network"

RULES = (
    Rule("SL301", "network-module", "high", 918, "imports {detail}, a network client or server module", FAMILY),
    Rule("SL302", "network-call", "high", 918, "opens a network connection through {detail}", FAMILY),
    Rule(
        "SL303",
        "hub-download",
        "high",
        494,
        "downloads from the Hub at run time through {detail}, fetching files that were never verified",
        FAMILY,
    ),
)

_NETWORK_MODULES = (
    "socket",
    "ssl",
    "urllib.request",
    "urllib2",
    "urllib3",
    "http.client",
    "http.server",
    "httplib",
    "requests",
    "httpx",
    "aiohttp",
    "ftplib",
    "smtplib",
    "poplib",
    "imaplib",
    "telnetlib",
    "nntplib",
    "webbrowser",
    "xmlrpc",
    "socketserver",
    "paramiko",
    "websocket",
    "websockets",
    "pycurl",
    "grpc",
    "dns",
)

FAMILY_TABLE = Family(
    name=FAMILY,
    rules=RULES,
    modules=dict.fromkeys(_NETWORK_MODULES, "SL301"),
    references={
        "huggingface_hub.hf_hub_download": "SL303",
        "huggingface_hub.snapshot_download": "SL303",
        "huggingface_hub.hf_hub_url": "SL303",
        "huggingface_hub.HfApi": "SL303",
        "huggingface_hub.HfFileSystem": "SL303",
        "huggingface_hub.file_download.hf_hub_download": "SL303",
        "huggingface_hub.file_download.http_get": "SL303",
        "huggingface_hub._snapshot_download.snapshot_download": "SL303",
        "torch.hub.load": "SL303",
        "torch.hub.load_state_dict_from_url": "SL303",
        "torch.hub.download_url_to_file": "SL303",
        "torch.utils.model_zoo.load_url": "SL303",
    },
    reference_prefixes=dict.fromkeys(_NETWORK_MODULES, "SL302"),
)
