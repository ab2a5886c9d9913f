"""prefetchd: an asynchronous prefetching data service.

S3 byte ranges in, decoded batches in a shared-memory ring out. The pipeline reads top to bottom:
config → fetch (S3, local files) → plan (epochs, shuffles) → formats (IDX framing) → decode → ring → serve.
"""

__version__ = "0.1.0"
