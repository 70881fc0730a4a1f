"""How uvim-keras meets the machine it runs on.

* `backend`: the one place for backend-specific code (compiled stateless
  functions, per-seed noise, ONNX-compatible ops);
* `host_memory`: keeping freed host memory for reuse (CPU training);
* `import_hooks`: what `import uvim_keras` arranges for keras-hub and
  TensorFlow when they are imported later.
"""
