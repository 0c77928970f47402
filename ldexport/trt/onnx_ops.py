"""The ONNX operators TensorRT 10.x's ONNX parser (onnx-tensorrt) imports.

Built from onnx-tensorrt's ``docs/operators.md`` (10.0 GA, 10.1 GA and 10.15 GA tables)
and its changelog for the releases in between. Only the op names and the release that
added each are kept; per-op restrictions the readiness check enforces itself (TopK) are
written where they are checked.

Ops from other domains are not in this table: TensorRT's parser hands any op it does not
know to its plugin registry, so they are judged by :mod:`ldexport.trt.readiness`.
"""

from __future__ import annotations

import re
from typing import Literal

from ldexport.errors import LdexportError

TensorRTVersion = tuple[int, int]

# The newest table the sets below were read from; later 10.x releases are judged by it.
NEWEST_TABLE: TensorRTVersion = (10, 15)

# Lowest ONNX opset of the default domain that TensorRT 10.x parses.
MIN_OPSET = 9

# Supported ("Y") in the 10.0 GA table, in every 10.x release since.
_SINCE_10_0 = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool
    BatchNormalization Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv
    ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu
    Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler
    InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
    LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or
    Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
    RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
    Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
    ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile
    TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

# Ops the parser learned after 10.0, with the first release that imports them.
_ADDED_IN: dict[str, TensorRTVersion] = {
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4),
    "HammingWindow": (10, 4),
    "HannWindow": (10, 4),
    "STFT": (10, 5),
    "Attention": (10, 14),
    "RMSNormalization": (10, 15),
    "RotaryEmbedding": (10, 15),
    "TensorScatter": (10, 15),
}

# Listed as not supported ("N") in the newest table.
UNSUPPORTED = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im
    CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
    ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial
    NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv
    QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty SequenceErase
    SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
    StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """.split()
)

OpSupport = Literal["supported", "later", "unsupported", "unlisted"]


def parse_trt_version(text: str) -> TensorRTVersion:
    """Parses ``"10.13"`` or ``"10.13.0.35"`` into ``(10, 13)``.

    Raises:
        LdexportError: the text is not a version, or not a TensorRT 10.x one.
    """
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)*", text.strip())
    if match is None:
        raise LdexportError(f"not a TensorRT version: {text!r} (expected e.g. 10.13)")
    version = (int(match.group(1)), int(match.group(2)))
    if version[0] != 10:
        raise LdexportError(
            f"the readiness tables cover TensorRT 10.x only, not {text} "
            "(ldexport targets TensorRT 10)"
        )
    return version


def op_support(op_type: str, version: TensorRTVersion) -> OpSupport:
    """How TensorRT ``version``'s ONNX parser treats a default-domain op.

    Returns:
        ``"supported"``; ``"later"`` when a newer 10.x release added it; ``"unsupported"``
        when the table lists it as not supported; ``"unlisted"`` when the table does not
        list it at all (an op newer than the parser, or a misspelt one).
    """
    if op_type in _SINCE_10_0:
        return "supported"
    if op_type in _ADDED_IN:
        return "supported" if version >= _ADDED_IN[op_type] else "later"
    if op_type in UNSUPPORTED:
        return "unsupported"
    return "unlisted"


def added_in(op_type: str) -> TensorRTVersion | None:
    """The 10.x release that added ``op_type`` to the parser, for ops added after 10.0."""
    return _ADDED_IN.get(op_type)
