# Sourced by the tools: one cargo target directory outside the clone, so that
# every clone, the tests, the demo, the benches and CI share one build of
# RocksDB's C++ (about 11 minutes on two cores). Works from an empty cache too.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${STRATA_TARGET_DIR:-$HOME/.cache/strata-target}}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
STRATA_BIN="$CARGO_TARGET_DIR/release/strata"
