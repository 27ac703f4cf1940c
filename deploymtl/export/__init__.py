"""Exporters: ONNX (fp32/fp16/int8 QDQ) and TensorRT engines, each verified against the static model."""
