"""Commands for people beside the daemon: `prefetchd inspect` (is this object what training expects?) and
`prefetchd sync` (put a local dataset into S3 without aws-cli). Each has a pure core and a thin async shell."""
