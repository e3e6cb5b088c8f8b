#!/usr/bin/env bash
# Runs every test program (tests/test_*.c, built into DIR) or, with --bench, every
# benchmark (tests/bench_*.c), from the repository root, and closes with one line
# adding up the cmocka summaries: "tests: N passed, N failed, N skipped".
# A program fails unless it exits 0 and its passed + failed + skipped tests add up to the
# number it declared ("[==========] Running N test(s)", summed over its groups), N >= 1.
# A skip prints its reason from tests/skip-allow.txt ([BUILD/]PROGRAM:TEST REASON, one a
# line; BUILD, e.g. build-san, limits the entry to that build folder's programs);
# with CI=true a skip not on that list is a failure.
# Each program runs in its own session and process group, its output going to a file
# (shown as it grows): a child that outlives it cannot hold the runner, and is killed
# with its group afterwards (which fails the program) or at the timeout.
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
# the summary lines this script reads are cmocka's standard output format
export CMOCKA_MESSAGE_OUTPUT=stdout
unset CMOCKA_XML_FILE
limit=${PIPENEM_TEST_TIMEOUT:-900}
build=$(basename "$(dirname "$dir")")   # build or build-san: an allow-list key may name it
allow=tests/skip-allow.txt
ci=false
[ "${CI:-}" = true ] && ci=true
passed=0 failed=0 skipped=0
failures=()

# sum of N over the lines "PREFIX N test(s)" of a log
count() { grep -E "^$1 [0-9]+ test" "$2" | awk -v k="$3" '{s+=$k} END {print s+0}'; }

# the reason PROGRAM:TEST may skip, from the allow-list; status 1 if it is not there
allowed() {
	[ -r "$allow" ] || return 1
	awk -v k="$1" '$1 == k { $1 = ""; sub(/^ +/, ""); print; f = 1; exit } END { exit !f }' "$allow"
}

# Runs one program; sets p f s (its passed, failed, skipped counts).
run_one() { # name bin
	local name=$1 bin=$2 log pid tpid rc declared left t reason
	log=$(mktemp)
	setsid timeout -k 10 "$limit" "${wrap[@]}" "$bin" >"$log" 2>&1 </dev/null &
	pid=$!
	tail -n +1 -s 0.2 -f --pid="$pid" "$log" &
	tpid=$!
	wait "$pid"
	rc=$?
	wait "$tpid"
	# setsid made the program's pid its process group: whatever is left there outlived it
	# (a second for what is already dying: stages follow their launcher by PDEATHSIG)
	for t in 1 2 3 4 5 6 7 8 9 10; do
		left=$(ps -eo pgid=,stat= | awk -v g="$pid" '$1 == g && $2 !~ /^Z/' | wc -l)
		[ "$left" -eq 0 ] && break
		sleep 0.1
	done
	[ "$left" -gt 0 ] && kill -KILL -- "-$pid" 2>/dev/null
	declared=$(grep -E '^\[==========\] Running [0-9]+ test' "$log" | awk '{s+=$3} END {print s+0}')
	p=$(count '\[  PASSED  \]' "$log" 4)
	f=$(count '\[  FAILED  \]' "$log" 4)
	s=$(count '\[  SKIPPED \]' "$log" 4)
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		f=1
		echo "# $name exited with status $rc before reporting a failure (timeout ${limit}s is 124)"
	fi
	if [ "$declared" -lt 1 ]; then
		f=$((f + 1))
		echo "# $name declared no tests (no \"[==========] Running N test(s)\" line)"
	elif [ $((p + f + s)) -ne "$declared" ]; then
		echo "# $name declared $declared tests but reported $p passed, $f failed, $s skipped"
		f=$((f + 1))
	fi
	if [ "$left" -gt 0 ]; then
		f=$((f + 1))
		echo "# $name left $left process(es) running after it exited; killed them"
	fi
	# the skipped tests' names: cmocka prints each once as it runs and once in its summary
	while read -r k t; do
		if reason=$(allowed "$build/$name:$t") || reason=$(allowed "$name:$t"); then
			echo "# skip allowed: $name:$t: $reason"
		elif $ci; then
			s=$((s - k / 2)) f=$((f + k / 2))
			echo "# skip not allowed in CI: $name:$t is not on $allow"
		else
			echo "# skip: $name:$t (not on $allow: CI=true fails it)"
		fi
	done < <(grep -E '^\[  SKIPPED \] ' "$log" | grep -vE '^\[  SKIPPED \] [0-9]+ test' |
		awk '{print $4}' | sort | uniq -c)
	rm -f "$log"
}

for src in tests/${kind}_*.c; do
	[ -e "$src" ] || continue
	name=$(basename "$src" .c)
	case "$name" in ${PIPENEM_TESTS:-*}) ;; *) continue ;; esac
	if [ ${#only[@]} -gt 0 ] && [[ " ${only[*]} " != *" $name "* ]]; then continue; fi
	echo "# --- $name"
	start=$EPOCHREALTIME
	run_one "$name" "$dir/$name"
	secs=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
	passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
	[ "$f" -gt 0 ] && failures+=("$name")
	printf '# %s: %s passed, %s failed, %s skipped in %ss\n' "$name" "$p" "$f" "$s" "$secs"
done
[ ${#failures[@]} -gt 0 ] && echo "# failed programs: ${failures[*]}"
echo "$label: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ $((passed + skipped)) -gt 0 ]
