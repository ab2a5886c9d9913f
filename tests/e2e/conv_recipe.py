"""MXNet's classic S3 recipe (tests/python/train/test_conv.py in MXNet 1.x), as a script the suite runs.

Same network, optimizer settings and iterator arguments as that script; the only changes are the data root
(`data/` → the first argument, e.g. s3://bucket-name/training-data/), the one-line opt-in below, and the
accuracy bar, which is for Fashion-MNIST (Debian's dataset) rather than MNIST. Prints the final accuracy.
"""

import logging
import sys

import mxnet as mx
import numpy as np

import prefetchd_client.mxnet_s3  # noqa: F401  the one line that makes s3:// paths work on pip-installed MXNet
from prefetchd.testing.mnist_net import conv_net


def main(root: str) -> float:
    logging.basicConfig(level=logging.INFO)
    model = mx.model.FeedForward(
        conv_net(mx, output_name="sm"), mx.cpu(), num_epoch=1, learning_rate=0.1, wd=0.0001, momentum=0.9
    )
    common = {"data_shape": (1, 28, 28), "label_name": "sm_label", "batch_size": 100, "flat": False, "silent": False}
    train = mx.io.MNISTIter(
        image=f"{root}train-images-idx3-ubyte", label=f"{root}train-labels-idx1-ubyte", shuffle=True, seed=10, **common
    )
    val = mx.io.MNISTIter(
        image=f"{root}t10k-images-idx3-ubyte", label=f"{root}t10k-labels-idx1-ubyte", shuffle=True, **common
    )
    model.fit(X=train, eval_data=val)
    prob = model.predict(val)
    val.reset()
    y = np.concatenate([batch.label[0].asnumpy() for batch in val]).astype("int")
    accuracy = float(np.sum(np.argmax(prob, axis=1) == y)) / len(y)
    print(f"final accuracy = {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1]) > 0.80 else 1)
