#!/usr/bin/env bash
# Runs every test program (tests/test_*.c, built into DIR) or, with --bench, every
# benchmark (tests/bench_*.c), from the repository root, and closes with one line
# adding up the cmocka summaries: "tests: N passed, N failed, N skipped".
# A program that dies before its summary counts as one failure.
# PIPENEM_TESTS=pattern runs only the programs whose name matches the glob.
# --valgrind NAME... runs the named test programs under valgrind's memcheck, where any
# memory error or definite leak fails the program.
set -u
kind=test label=tests wrap=() only=()
if [ "${1:-}" = "--bench" ]; then kind=bench label=benchmarks; shift; fi
if [ "${1:-}" = "--valgrind" ]; then
	label=valgrind
	wrap=(valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite)
	shift
fi
dir=${1:?usage: tests/run.sh [--bench | --valgrind] BUILD/tests [NAME...]}
shift
only=("$@")
cd "$(dirname "$0")/.."
# The programs run the pipenem of their own build folder (plain or sanitizer).
export PIPENEM=${PIPENEM:-$dir/../pipenem}
limit=${PIPENEM_TEST_TIMEOUT:-900}
passed=0 failed=0 skipped=0
failures=()
for src in tests/${kind}_*.c; do
	[ -e "$src" ] || continue
	name=$(basename "$src" .c)
	case "$name" in ${PIPENEM_TESTS:-*}) ;; *) continue ;; esac
	if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $name "* ]]; then continue; fi
	bin="$dir/$name"
	echo "# --- $name"
	log=$(mktemp)
	start=$EPOCHREALTIME
	timeout -k 10 "$limit" "${wrap[@]}" "$bin" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
	p=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
	f=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
	s=$(grep -E '^\[  SKIPPED \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1
		echo "# $name exited with status $rc before reporting a failure (timeout ${limit}s is 124)"
	fi
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
	[ "$f" -gt 0 ] && failures+=("$name")
	printf '# %s: %s passed, %s failed, %s skipped in %ss\n' "$name" "$p" "$f" "$s" "$secs"
	rm -f "$log"
done
[ ${#failures[@]} -gt 0 ] && echo "# failed programs: ${failures[*]}"
echo "$label: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ $((passed + skipped)) -gt 0 ]
