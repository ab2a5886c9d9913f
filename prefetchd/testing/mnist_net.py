"""The seed's MNIST conv net (MXNet's tests/python/train/test_conv.py), trained one epoch with Module.fit.

Both sides of every comparison (local `mx.io.MNISTIter` and prefetchd over s3://) train the same symbol
from the same initial weights, so any difference in accuracy comes from the data.
"""

from __future__ import annotations

from typing import Any


def conv_net(mx: Any, output_name: str = "softmax") -> Any:
    """Convolution 32 3×3 stride 2 → BatchNorm → relu → 2×2 max pool, twice; Flatten; FC 10; softmax."""
    x = mx.symbol.Variable("data")
    for i in (1, 2):
        x = mx.symbol.Convolution(data=x, name=f"conv{i}", num_filter=32, kernel=(3, 3), stride=(2, 2))
        x = mx.symbol.BatchNorm(data=x, name=f"bn{i}")
        x = mx.symbol.Activation(data=x, name=f"relu{i}", act_type="relu")
        x = mx.symbol.Pooling(data=x, name=f"mp{i}", kernel=(2, 2), stride=(2, 2), pool_type="max")
    x = mx.symbol.Flatten(data=x, name="flatten")
    x = mx.symbol.FullyConnected(data=x, name="fc2", num_hidden=10)
    return mx.symbol.SoftmaxOutput(data=x, name=output_name)


def fit_one_epoch(mx: Any, train: Any, val: Any, *, seed: int = 42, learning_rate: float = 0.1) -> float:
    """Train one epoch with SGD from a seeded Xavier init; returns the validation accuracy."""
    import numpy as np

    mx.random.seed(seed)
    np.random.seed(seed)
    module = mx.mod.Module(conv_net(mx), context=mx.cpu(), label_names=[train.provide_label[0].name])
    module.fit(
        train,
        eval_data=val,
        optimizer="sgd",
        optimizer_params={"learning_rate": learning_rate},
        initializer=mx.init.Xavier(),
        num_epoch=1,
    )
    return float(dict(module.score(val, "acc"))["accuracy"])
