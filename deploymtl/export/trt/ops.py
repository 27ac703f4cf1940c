"""What TensorRT's ONNX parser accepts (10.x/11.x), as data for the lint (`lint.py`).

Sources: docs/tensorrt.md (section 7) and the operator support matrix of onnx-tensorrt (`docs/operators.md`,
TensorRT 10.15, opset 9 to 24). Operator names only; the restrictions on attributes live as rules in `lint.py`.
"""

from __future__ import annotations

OPSET_MIN = 9
OPSET_MAX_10X = 24  # the 10.x parsers' upper bound; 11.x parsers accept one more
OPSET_MAX = 25

SUPPORTED: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization
GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool
Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow
PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2
ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze
Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Listed "N" in the support matrix, with the fix a user of deploymtl would apply.
_QOPERATOR = "quantize in QDQ format instead (onnxruntime.quantization QuantFormat.QDQ, symmetric int8)"
# ONNX Runtime's quantised-operator form (what its optimiser turns Q/DQ pairs into on x86)
QOPERATORS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
_SEQUENCE = "sequences of tensors have no TensorRT equivalent; re-export without Python lists of tensors"
UNSUPPORTED: dict[str, str] = {
    **{op: _QOPERATOR for op in QOPERATORS},
    "DynamicQuantizeLinear": "dynamic quantization is not supported; use static QDQ int8 with calibrated scales",
    "SequenceAt": _SEQUENCE, "SequenceConstruct": _SEQUENCE, "SequenceEmpty": _SEQUENCE, "SequenceErase": _SEQUENCE,
    "SequenceInsert": _SEQUENCE, "SequenceLength": _SEQUENCE, "SequenceMap": _SEQUENCE, "SplitToSequence": _SEQUENCE,
    "ConcatFromSequence": _SEQUENCE,
    "Optional": "optional values are not supported", "OptionalGetElement": "optional values are not supported",
    "OptionalHasElement": "optional values are not supported",
    "Unique": "data-dependent output sizes are not supported", "Compress": "data-dependent output sizes are not "
    "supported", "MaxUnpool": "not supported", "MaxRoiPool": "not supported; RoiAlign is", "Det": "not supported",
    "DFT": "not supported", "Col2Im": "not supported", "CenterCropPad": "not supported; use Slice/Pad",
    "AffineGrid": "not supported", "Bernoulli": "not supported", "Multinomial": "not supported",
    "BitShift": "not supported", "BitwiseAnd": "not supported", "BitwiseNot": "not supported",
    "BitwiseOr": "not supported", "BitwiseXor": "not supported", "ImageDecoder": "not supported",
    "MelWeightMatrix": "not supported", "NegativeLogLikelihoodLoss": "training-only operator",
    "SoftmaxCrossEntropyLoss": "training-only operator", "TfIdfVectorizer": "string operator",
    "RegexFullMatch": "string operator", "StringConcat": "string operator", "StringNormalizer": "string operator",
    "StringSplit": "string operator",
}

RESIZE_COORDINATE_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners", "tf_half_pixel_for_nn"})
RESIZE_MODES = frozenset({"nearest", "linear", "cubic"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
TOPK_MAX_K = 3840  # K must be strictly less than this

REDUCE_OPS = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"})

# Input positions that carry shapes, indices, axes or counts rather than data: an INT64 constant there is normal.
INDEX_INPUTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}), "Slice": frozenset({1, 2, 3, 4}),
    "Gather": frozenset({1}), "GatherElements": frozenset({1}), "GatherND": frozenset({1}),
    "Scatter": frozenset({1}), "ScatterElements": frozenset({1}), "ScatterND": frozenset({1}),
    "Unsqueeze": frozenset({1}), "Squeeze": frozenset({1}), "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}), "Pad": frozenset({1, 2, 3}), "Split": frozenset({1}), "TopK": frozenset({1}),
    "ConstantOfShape": frozenset({0}), "Range": frozenset({0, 1, 2}), "OneHot": frozenset({0, 1}),
    "CumSum": frozenset({1}), "Trilu": frozenset({1}), "NonMaxSuppression": frozenset({2}),
    "RoiAlign": frozenset({2}), "Dropout": frozenset({1, 2}),
    **{op: frozenset({1}) for op in REDUCE_OPS},
}

# Producers whose output is a shape (or derived from one), never image data.
SHAPE_OPS = frozenset({"Shape", "Size"})
