"""What the daemon shows about itself over HTTP: health, Prometheus metrics, and its streams as JSON.

Nothing here counts anything on the hot path: at each scrape the collector reads the counters the fetch,
cache and stream code keep anyway (`snapshot.py` is the one shape they are read into).
"""
