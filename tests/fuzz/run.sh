#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD for SECONDS each on its seed corpus
# (tests/fuzz/corpus/<target>/, read only) plus a working corpus in BUILD/corpus/, as many
# at once as there are CPUs (FUZZ_JOBS overrides): each target still gets SECONDS of its own.
# Prints one row per target, in name order (seconds run, executions, corpus size); exits 1
# on a finding, whose reproducer is left in BUILD/findings/.
set -uo pipefail
build=$(cd "${1:?usage: run.sh BUILD SECONDS}" && pwd)
secs=${2:?usage: run.sh BUILD SECONDS}
jobs=${FUZZ_JOBS:-$(nproc)}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$build/findings"

# One target; its row goes to BUILD/findings/T.row, status 1 on a finding.
fuzz_one() { # bin
	local bin=$1 t seeds work log start rc end execs ncorp res
	t=$(basename "$bin" | sed 's/^fuzz_//')
	seeds="$here/corpus/$t"
	work="$build/corpus/$t"
	mkdir -p "$work" "$seeds"
	log="$build/findings/$t.log"
	start=$(date +%s)
	"$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$build/findings/$t-" "$work" "$seeds" >"$log" 2>&1
	rc=$?
	end=$(date +%s)
	execs=$(grep -a -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
	ncorp=$(ls "$work" "$seeds" 2>/dev/null | grep -vc ':$')
	if [ $rc -eq 0 ]; then res=ok; else res="FINDING (see $log)"; fi
	{
		printf '   %-14s %8d %12s %8d %s\n' "$t" $((end - start)) "${execs:-?}" "$ncorp" "$res"
		[ $rc -eq 0 ] || grep -m3 -E 'ERROR|SUMMARY|runtime error' "$log" | sed 's/^/#   /'
	} >"$build/findings/$t.row"
	return $((rc != 0))
}

printf '# fuzz: %s s per target, %s at once\n#  %-14s %8s %12s %8s %s\n' "$secs" "$jobs" target seconds execs \
	corpus result
failed=0 pids=() bins=()
for bin in "$build"/fuzz_*; do
	[ -x "$bin" ] || continue
	bins+=("$bin")
	while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
	fuzz_one "$bin" &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
for bin in "${bins[@]}"; do
	cat "$build/findings/$(basename "$bin" | sed 's/^fuzz_//').row"
done
echo "# fuzz: $([ $failed -eq 0 ] && echo OK || echo FAILED)"
exit $failed
