"""The dashboard: one page served by the server (``GET /dashboard``), read-only, offline.

- `feed`: incremental aggregates of the event log and the metrics, in time buckets;
- `stats`: running moments, metric samples, latency quantiles;
- `payload`: the JSON of ``GET /v1/dashboard/data`` that the page polls;
- `page`: the page and its assets (``static/``: HTML, one small JS file, CSS; the charts
  are SVG drawn by that file, so nothing is fetched from elsewhere).
"""
