{
  "format": "safeloader-signature-v1",
  "signatures": [
    {
      "key_id": "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
      "signature": "RimFRYQOVrmEe3XacQWB36+HlhlBzd5H262bQIdfQ9W0oFwxswi9kq6yutNBa7mI8wTLTUvgaft7KVDHD+YhDg==",
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
