{
  "format": "safeloader-signature-v1",
  "signatures": [
    {
      "key_id": "ed25519:A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
      "signature": "V/mBU9gi9knfp0yEljvEGRf7gvZfdO+Qm8+kOnX3ChiVhZ79zGAmgw75bzrJg/lFtkGMW7uoYCgAn13GwQxDDQ==",
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
