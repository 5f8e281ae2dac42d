#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target of fuzz/ for FUZZ_SECONDS each (docs/testing.md,
# "Fuzzing"), one after the other, and prints a table: time, executions, coverage, features and
# crashes per target.
#
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TARGETS    the targets to run (default: all, `cargo fuzz list`)
#   FUZZ_SANITIZER  cargo-fuzz's --sanitizer (default none: our crates forbid unsafe code, and
#                   without ASan the targets run about twice as fast; `address` to include it)
#   FUZZ_TARGET_DIR the nightly build's target dir (default $CARGO_TARGET_DIR/fuzz)
#   FUZZ_WORK       where the grown corpus and the logs go (default $CARGO_TARGET_DIR/fuzz-work);
#                   the committed seeds (fuzz/corpus/<target>) are read, never written
#   FUZZ_ARGS       extra libFuzzer flags (e.g. -jobs=2)
#
# Crashes are written to fuzz/artifacts/<target>/ (ignored by git). To keep one: minimize it
# (`cargo +nightly fuzz tmin <target> <file>`), copy it into fuzz/corpus/<target>/, and fix the
# bug; tests/tests/fuzz_corpus.rs replays the corpus on stable in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/tiercache-target}/fuzz}
work=${FUZZ_WORK:-$target_dir-work}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "make fuzz needs the nightly toolchain (libFuzzer's instrumentation): rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: installing it with cargo install cargo-fuzz --locked (once, a few minutes)"
  cargo install cargo-fuzz --locked
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir"

# How many crash, leak, timeout or OOM inputs libFuzzer has left for target $1.
crashes() { { find "fuzz/artifacts/$1" -type f 2>/dev/null || true; } | wc -l; }

summary=()
for t in $targets; do
  mkdir -p "$work/corpus/$t"
  log="$work/$t.log"
  before=$(crashes "$t")
  echo "==> fuzz $t for ${seconds}s (log: $log)"
  status=0
  # The grown corpus first (libFuzzer writes new inputs there), then the committed seeds.
  # shellcheck disable=SC2086
  cargo +nightly fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$t" \
    "$work/corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=25 -print_final_stats=1 ${FUZZ_ARGS:-} \
    >"$log" 2>&1 || status=$?
  after=$(crashes "$t")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  time=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  summary+=("$(printf '| %s | %ss | %s | %s | %s | %s |' "$t" "${time:-$seconds}" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$((after - before))")")
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "fuzz $t failed (exit $status); the input is in fuzz/artifacts/$t/" >&2
  fi
done

echo
echo "| target | time | executions | coverage (cov) | features (ft) | new crashes |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${summary[@]}"
for t in $targets; do
  if [ "$(crashes "$t")" -gt 0 ]; then
    echo "crash inputs in fuzz/artifacts/$t/" >&2
    failed=1
  fi
done
exit ${failed:-0}
