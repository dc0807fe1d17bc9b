#!/usr/bin/env bash
# Short fuzz runs of every target (cargo-fuzz, libFuzzer, a nightly toolchain), starting
# from the kept corpus. A crash leaves its input in fuzz/artifacts/<target>/: copy it to
# fuzz/regressions/<target>/ with the fix, and tests/fuzz_regressions.rs runs it on
# stable from then on.
#
#   fuzz/run.sh             every target for 60 s, side by side
#   FUZZ_SECONDS=600 fuzz/run.sh event
#
# New inputs the fuzzer finds go to a scratch copy of the corpus, not into the checkout;
# to keep some, run `cargo +nightly fuzz cmin <target>` on a long run's corpus and commit
# the result (inputs over 2 KB are left out of the repository).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(event config collector)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: no nightly toolchain (rustup toolchain install nightly); skipped"
  exit 77
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo +nightly install --locked cargo-fuzz >/dev/null
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# Built first, one after the other (one cargo at a time); then every target fuzzes at
# once, side by side: the runs are bounded by wall-clock time, so three targets take 60 s
# instead of 180 (on two cores each gets about two thirds of one).
for target in "${targets[@]}"; do
  cargo +nightly fuzz build -s none "$target" >>"$scratch/build.log" 2>&1 \
    || { tail -n 40 "$scratch/build.log"; echo "fuzz: $target does not build"; exit 1; }
done
pids=()
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  cp -r "corpus/$target/." "$scratch/$target/"
  echo "fuzz: $target for ${seconds} s"
  cargo +nightly fuzz run -s none "$target" "$scratch/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 > "$scratch/$target.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!targets[@]}"; do
  target=${targets[$i]}
  status=0
  wait "${pids[$i]}" || status=$?
  echo "fuzz: $target:" $(grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/$target.log" || true)
  if [ "$status" -ne 0 ] || [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    tail -n 40 "$scratch/$target.log"
    echo "fuzz: $target failed (exit $status); failing inputs: $(ls "artifacts/$target" 2>/dev/null)"
    failed=1
  fi
done
exit "$failed"
