{
  "format": "safeloader-signature-v1",
  "signatures": [
    {
      "key_id": "ed25519:Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=",
      "signature": "2hi1B9xaUT3mywf8UQll7eW4QLM5zdMoiqrJdElLREw7r4PNOPPn2f4hfBlOMB4aG8yEF0WgzScKweGmzL5jBw==",
      "signed": {
        "entry": "pipeline.py",
        "files": {
          "helpers.py": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
          "pipeline.py": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        },
        "repo": "org/pipe",
        "subfolder": ""
      }
    },
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
