"""Helpers for the demo and the tests: an embedded S3 server, the Fashion-MNIST finder, a daemon process.

Needs the `testing` extra (moto's server mode); nothing in the daemon proper imports this package. Two
modules also run in the compose stack's images (docker/) and need no extra: `seed_bucket` (botocore) and
`train_mnist` (MXNet and the client).
"""
