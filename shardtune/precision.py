"""Dtype names as the config writes them (train.precision, method.compute_dtype, strategy.reduce_dtype, export's
--dtype) and the torch dtypes they stand for. A leaf module: the one table of them."""
import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PRECISIONS = ("auto", *DTYPES)  # train.precision: auto = bf16 on GPU, fp32 on CPU


def bytes_per_element(name: str) -> int:
    return DTYPES[name].itemsize
