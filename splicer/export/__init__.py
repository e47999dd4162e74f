"""``splicer export``: a trained network leaves splicer in formats other tools load.

The weights come out in the original model's own keys (``state_dict``, ``safetensors``:
load them into ``timm.create_model(...)`` and the like with ``strict=True``); the whole
network as a runnable program (``onnx``, ``pt2``), optionally with the input normalisation
built in. Every export is checked against splicer's network before it is kept, and gets a
JSON sidecar that says what the network expects and how well it did.
"""
