"""Files and Hub assets that cross the sandbox boundary on the caller's terms.

* :mod:`.registry` names the diffusers methods that take a path or a Hub repo (``load_lora_weights``,
  ``load_textual_inversion``, ``load_ip_adapter``, ``load_attn_procs``, ``from_single_file``) or write a
  folder (``save_pretrained``, ``output_dir=``);
* :mod:`.formats` decides which files may cross (safetensors checked, pickle only under ``allow_pickle``,
  never code);
* :mod:`.resolve` turns a caller's argument into exactly the files the method reads, through the same
  policy, pins and Hub client as pipeline code, with the caller's token;
* :mod:`.calls` stages those files in the worker's private directory for one call, and copies what the
  worker wrote back into the caller's folder (:mod:`.outputs` checks it);
* :mod:`.broker` answers the worker's own Hub downloads (pipeline code calling ``from_pretrained`` of
  another repo) with files, never with network access.

The worker-side counterparts are :mod:`safeloader.worker.assets` and :mod:`safeloader.worker.hub_broker`.
"""
