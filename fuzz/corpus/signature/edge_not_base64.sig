{
  "format": "safeloader-signature-v1",
  "signatures": [
    {
      "key_id": "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
      "signature": "\u00e9!",
      "signed": {
        "entry": "pipeline.py",
        "files": {
          "helpers.py": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
          "pipeline.py": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        },
        "repo": "org/pipe",
        "subfolder": ""
      }
    }
  ]
}
