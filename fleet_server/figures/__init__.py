"""The reliability figures of DESIGN.md: computed from stored history (`figures`, `queries`),
rated against their targets, reused briefly for the dashboards (`recent`), and served as JSON,
CSV, trends, the fleet summary, alerts and Prometheus metrics (`routes`)."""
