"""Release folders: a trained tokenizer as ``config.json`` + ``model.safetensors`` (+ model card, vocoder, ONNX).

:mod:`transcoder.release.folder` reads a folder (JSON and safetensors only, nothing unpickled),
:mod:`transcoder.release.export` writes one from a trainer checkpoint, :mod:`transcoder.release.card` writes its
model card, :mod:`transcoder.release.onnx_graphs` / :mod:`transcoder.release.onnx_backend` export and run the
ONNX graphs, and :mod:`transcoder.release.hub` resolves a Hugging Face Hub name to a local folder.
"""
