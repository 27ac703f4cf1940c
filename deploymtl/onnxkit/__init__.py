"""The ONNX toolkit every stage shares: `load` (the one path-or-proto loader), `session` (the one ONNX Runtime
session factory), `index` (the graph index: producers, consumers, constants, value types) and `qdq` (the one set
of Q/DQ scheme rules, used by the int8 quantizer and the TensorRT lint)."""
