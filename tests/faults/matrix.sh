#!/usr/bin/env bash
# The fault matrix: {kill -9, SIGSTOP for 30 s, closing the sockets, the link going down}
# x {stage 0, the middle stage, the last stage} x {bootstrap, iteration 1, iteration 1's
# optimizer step}, each injected through PIPENEM_FAULT into a 3-stage emulated run.
# Every case is a sweep whose cell 0 has finished: `pipenem sweep --resume` of a copy of a
# two-cell sweep, so it runs cell 1 only, and the fault (ACTION:RANK:WHEN@1) hits it. The
# sweep's cells are one namespace per stage joined by veths to a bridge (as root; without
# root the stages share loopback and the link-down cases are skipped), where the link-down
# stage sets its own veth down. A case passes when the sweep exits with failure
# within the bound, a message names the faulted rank, cell 0's results (runs.csv,
# iterations.csv, ops.csv, table.md) are byte-for-byte what they were, and no stage
# process, namespace, veth or bridge is left. Prints one row per case; exits 1 if any fails.
# usage: tests/faults/matrix.sh PIPENEM [JOBS]   (root needed for the link-down cases)
set -uo pipefail
bin=$(realpath "${1:?usage: matrix.sh PIPENEM [JOBS]}")
jobs=${2:-${FAULT_JOBS:-4}}
T=10       # --timeout: the longest a single wait may take
GRACE=10   # the launcher kills stragglers this long after the first failure
BOUND=$((T + GRACE + 8))
GRID=(--model tiny --stages 3 --batch-size 4 --seq-len 16 --schedule gpipe --micro-batch-sizes 1,2
	--profiles default --compute emulate:fwd=5ms,bwd=10ms --iters 3 --warmup 1 --timeout $T --no-plots)
KEPT=(runs.csv iterations.csv ops.csv table.md)   # what a failed cell must leave as it was
work=$(mktemp -d /tmp/pn-faults-XXXXXX)
t_start=$(date +%s.%N)


cleanup() {
	# a sweep killed by the watchdog cannot remove its topology: do it for it
	local lp ns
	for lp in $(cat "$work"/case*/launcher 2>/dev/null); do
		for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^pn$lp-" || true); do
			ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
			ip netns del "$ns" 2>/dev/null
		done
	done
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The baseline: a two-cell sweep whose cell 1 is killed, so that cell 0 is finished and
# cell 1 is missing; each case resumes a copy of it.
PIPENEM_FAULT=kill:1:1@1 "$bin" sweep "${GRID[@]}" --out "$work/base" >"$work/base.out" 2>&1
base_rc=$?
if [ $base_rc -ne 1 ] || ! grep -q "^0," "$work/base/runs.csv" 2>/dev/null || grep -q "^1," "$work/base/runs.csv"; then
	echo "faults: the baseline sweep (cell 0 finished, cell 1 killed) did not come out as planned (exit $base_rc):" >&2
	cat "$work/base.out" >&2
	exit 1
fi
(cd "$work/base" && sha256sum "${KEPT[@]}") >"$work/base.sha"

alive() { # pid -> 0 if it is still a pipenem process
	[ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q pipenem
}

# SIGSTOP lasts 30 s: whoever is still stopped then is continued.
cont_after_30s() { # out-file rank
	local t=0 pid=""
	while [ $t -lt 60 ]; do
		pid=$(grep -oP "^pipenem: rank $2 \(pid \K[0-9]+(?=\) was stopped)" "$1" 2>/dev/null | head -n1)
		[ -n "$pid" ] && break
		sleep 0.5
		t=$((t + 1))
	done
	[ -n "$pid" ] || return 0
	for ((t = 0; t < 60; t++)); do
		alive "$pid" || return 0
		sleep 0.5
	done
	kill -CONT "$pid" 2>/dev/null
}

run_sweep() { # dir action rank when
	local d=$1
	PIPENEM_FAULT="$2:$3:$4@1" "$bin" sweep --resume "$d/sweep" >"$d/out" 2>&1 &
	local lpid=$!
	echo "$lpid" >"$d/launcher"
	# the watchdog holds no output open, so nobody waits for its sleep after the case
	(sleep $((BOUND + 30)) && kill -9 "$lpid") >/dev/null 2>&1 &
	local wpid=$!
	local cpid=""
	if [ "$2" = stop ]; then
		cont_after_30s "$d/out" "$3" >/dev/null 2>&1 &
		cpid=$!
	fi
	wait $lpid
	echo $? >"$d/rc"
	pkill -P "$wpid" 2>/dev/null
	kill "$wpid" 2>/dev/null
	[ -n "$cpid" ] && kill "$cpid" 2>/dev/null
}

run_case() { # n action rank when
	local n=$1 d="$work/case$1"
	mkdir -p "$d"
	cp -a "$work/base" "$d/sweep"
	local t0 t1
	t0=$(date +%s.%N)
	run_sweep "$d" "$2" "$3" "$4"
	t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc >"$d/secs"
	sleep 0.5
	# the stages are forks of the sweep: their command line names this case's directory
	local left
	left=$( (pgrep -f -- "--resume $d/sweep" || true) | wc -l)
	echo "$left" >"$d/left"
	# what the sweep's topology made is named pn<sweep pid>-...
	local lp nsleft lnk
	lp=$(cat "$d/launcher")
	nsleft=$( (ip netns list 2>/dev/null | grep -c "^pn$lp-") || true)
	lnk=$( (ip -o link 2>/dev/null | grep -c "pn$lp-") || true)
	echo $((nsleft + lnk)) >"$d/net"
	(cd "$d/sweep" && sha256sum -c --quiet "$work/base.sha" >/dev/null 2>&1) && echo intact >"$d/kept" ||
		echo CHANGED >"$d/kept"
	# the cause: the launcher names the faulted rank, or a survivor says it lost it
	if grep -v PIPENEM_FAULT "$d/out" | grep -qE "FAILED: rank $3 |rank $3 disconnected|for rank $3: timed out|rank $3 (\(pid [0-9]+\) )?was (killed|stopped)|connection to rank $3\b|lost rank $3\b|to rank $3: Destination is unreachable"; then
		echo yes >"$d/cause"
	else
		echo NO >"$d/cause"
	fi
}

actions=(kill stop close linkdown)
if [ "$(id -u)" -ne 0 ]; then
	# without root the sweep's stages share loopback: there is no link of their own to drop
	echo "# faults: not root: the link-down cases need network namespaces; they are skipped" >&2
	actions=(kill stop close)
fi
ranks=(0 1 2)
whens=(boot 1 opt)
n=0
declare -A desc
for a in "${actions[@]}"; do
	for r in "${ranks[@]}"; do
		for w in "${whens[@]}"; do
			# FAULT_CASES='kill:1:.*' runs only the cases matching it (ACTION:RANK:WHEN)
			[[ "$a:$r:$w" =~ ^(${FAULT_CASES:-.*})$ ]] || continue
			desc[$n]="$a $r $w"
			n=$((n + 1))
		done
	done
done
total=$n
running=0
for ((c = 0; c < total; c++)); do
	read -r a r w <<<"${desc[$c]}"
	run_case $c "$a" "$r" "$w" &
	running=$((running + 1))
	if [ $running -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
done
wait

stage_name=(first middle last)
when_name() { case $1 in boot) echo bootstrap ;; opt) echo "opt step" ;; *) echo "iteration $1" ;; esac; }
printf '# fault matrix: sweep cell 1 of 2 (cell 0 finished), 3 stages in namespaces, tiny model, emulate:fwd=5ms,bwd=10ms,\n'
printf '# --timeout %d s, bound %d s, %d cases, %d at a time; kept = cell 0 files byte for byte\n' $T $BOUND $total "$jobs"
printf '#  %4s %-9s %-11s %-12s %5s %7s %6s %6s %7s %5s  %s\n' case fault stage when exit secs cause procs kept net verdict
failed=0
for ((c = 0; c < total; c++)); do
	read -r a r w <<<"${desc[$c]}"
	d="$work/case$c"
	rc=$(cat "$d/rc" 2>/dev/null || echo '?')
	secs=$(cat "$d/secs" 2>/dev/null || echo 999)
	cause=$(cat "$d/cause" 2>/dev/null || echo '?')
	left=$(cat "$d/left" 2>/dev/null || echo '?')
	kept=$(cat "$d/kept" 2>/dev/null || echo '?')
	net=$(cat "$d/net" 2>/dev/null || echo '?')
	ok=PASS
	[ "$rc" = 1 ] || ok=FAIL
	awk -v s="$secs" -v b=$BOUND 'BEGIN { exit !(s <= b) }' || ok=FAIL
	[ "$cause" = yes ] && [ "$left" = 0 ] && [ "$kept" = intact ] && [ "$net" = 0 ] || ok=FAIL
	[ $ok = PASS ] || failed=$((failed + 1))
	printf '   %4d %-9s %-11s %-12s %5s %7.1f %6s %6s %7s %5s  %s\n' $c "$a" "$r (${stage_name[$r]})" "$(when_name "$w")" \
		"$rc" "$secs" "$cause" "$left" "$kept" "$net" $ok
	if [ $ok = FAIL ]; then
		sed 's/^/#      | /' "$d/out" | grep -v '^#      | \( \|#  \)' | tail -n 12
	fi
done
t_end=$(date +%s.%N)
wall=$(echo "$t_end - $t_start" | bc)
leftover=0
for lp in $(cat "$work"/case*/launcher 2>/dev/null); do
	leftover=$((leftover + $( (ip netns list 2>/dev/null | grep -c "^pn$lp-") || true)))
done
printf '# wall time %.0f s; namespaces left: %s\n' "$wall" "$leftover"
if [ $failed -eq 0 ] && [ "$leftover" = 0 ]; then
	echo "# faults: $total cases: OK"
	exit 0
fi
echo "# faults: $failed of $total cases FAILED"
exit 1
