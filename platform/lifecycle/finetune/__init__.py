"""LoRA / QLoRA fine-tuning as a plain library: settings, one training loop, evaluation.

* :mod:`.settings`: ``LoraSettings``, ``TrainSettings`` (frozen, checked without I/O)
  and the errors ``InvalidFineTune`` / ``FineTuneFailed``;
* :mod:`.train`: ``preflight`` (checks before any weight is loaded) and ``train``
  (one loop for both methods; adapter + ``metrics.json`` out);
* :mod:`.evaluate`: base vs adapter on held-out records (exact match, ROUGE-L, rules).

Heavy libraries (torch, transformers, peft, bitsandbytes) are imported inside the
functions that need them.
"""
