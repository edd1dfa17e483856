//! Test-and-benchmark package of the polylm workspace: see `tests/` and `benches/`.
