#!/usr/bin/env bash
# The fault matrix: {kill -9, SIGSTOP for 30 s, closing the sockets, the link going down}
# x {stage 0, the middle stage, the last stage} x {bootstrap, iteration 1, iteration 1's
# optimizer step}, each injected through PIPENEM_FAULT into a 3-stage emulated run.
# Every case runs under the launcher, `pipenem run`: kill/stop/close over loopback,
# link-down in the launcher's namespace topology (one namespace per stage, veths to a
# bridge), where the stage sets its own veth down. A case passes when the launcher exits
# with failure within the bound, a message names the faulted rank, the trace of a
# finished run given to it as --trace is byte-for-byte intact, and no stage process,
# namespace, veth or bridge is left. Prints one row per case; exits 1 if any case fails.
# usage: tests/faults/matrix.sh PIPENEM [JOBS]   (root needed for the link-down cases)
set -uo pipefail
bin=$(realpath "${1:?usage: matrix.sh PIPENEM [JOBS]}")
jobs=${2:-${FAULT_JOBS:-4}}
T=10       # --timeout: the longest a single wait may take
GRACE=10   # pipenem run kills stragglers this long after the first failure
BOUND=$((T + GRACE + 8))
MODEL=(--model tiny --layers 3 --stages 3 --compute emulate:fwd=5ms,bwd=10ms --iters 3 --warmup 1 --timeout $T)
work=$(mktemp -d /tmp/pn-faults-XXXXXX)
t_start=$(date +%s.%N)

cleanup() {
	# a launcher killed by the watchdog cannot remove its topology: do it for it
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

# A finished run's trace: every case gets a copy as its --trace target and must leave it
# untouched (a failed run writes nothing over finished results).
if ! "$bin" run "${MODEL[@]}" --trace "$work/finished.csv" >"$work/baseline.out" 2>&1; then
	echo "faults: the baseline run without a fault failed:" >&2
	cat "$work/baseline.out" >&2
	exit 1
fi

alive() { # pid -> 0 if it is still a pipenem process
	[ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q pipenem
}

# SIGSTOP lasts 30 s: whoever is still stopped then is continued.
cont_after_30s() { # out-file rank
	local t=0 pid=""
	while [ $t -lt 60 ]; do
		pid=$(grep -oP "^# rank $2: pid \K[0-9]+" "$1" 2>/dev/null | head -n1)
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

run_launcher() { # dir action rank when
	local d=$1 net=()
	# link-down needs links to drop: the launcher's namespace topology (a TBF rate far
	# above what the run sends, so the links are as good as unshaped)
	[ "$2" = linkdown ] && net=(--net rate=10gbit --emulator netem)
	PIPENEM_FAULT="$2:$3:$4" "$bin" run "${MODEL[@]}" "${net[@]}" --trace "$d/trace.csv" >"$d/out" 2>&1 &
	local lpid=$!
	echo "$lpid" >"$d/launcher"
	(sleep $((BOUND + 30)) && kill -9 "$lpid" 2>/dev/null) &
	local wpid=$!
	local cpid=""
	if [ "$2" = stop ]; then
		cont_after_30s "$d/out" "$3" &
		cpid=$!
	fi
	wait $lpid
	echo $? >"$d/rc"
	kill "$wpid" 2>/dev/null
	[ -n "$cpid" ] && kill "$cpid" 2>/dev/null
	grep -oP '^# rank [0-9]+: pid \K[0-9]+' "$d/out" >"$d/pids" 2>/dev/null
}

run_case() { # n action rank when
	local n=$1 d="$work/case$1"
	mkdir -p "$d"
	cp "$work/finished.csv" "$d/trace.csv"
	sha256sum <"$d/trace.csv" >"$d/sha.before"
	local t0 t1
	t0=$(date +%s.%N)
	run_launcher "$d" "$2" "$3" "$4"
	t1=$(date +%s.%N)
	echo "$t1 - $t0" | bc >"$d/secs"
	sleep 0.5
	local left=0 pid
	for pid in $(cat "$d/pids" 2>/dev/null); do
		alive "$pid" && left=$((left + 1))
	done
	echo $left >"$d/left"
	# what the launcher's topology made is named pn<launcher pid>-...
	local lp nsleft lnk
	lp=$(cat "$d/launcher")
	nsleft=$( (ip netns list 2>/dev/null | grep -c "^pn$lp-") || true)
	lnk=$( (ip -o link 2>/dev/null | grep -c "pn$lp-") || true)
	echo $((nsleft + lnk)) >"$d/net"
	sha256sum <"$d/trace.csv" | cmp -s - "$d/sha.before" && echo intact >"$d/trace" || echo CHANGED >"$d/trace"
	# the cause: the launcher names the faulted rank, or a survivor says it lost it
	if grep -v PIPENEM_FAULT "$d/out" | grep -qE "FAILED: rank $3 |rank $3 disconnected|for rank $3: timed out|rank $3 (\(pid [0-9]+\) )?was (killed|stopped)|connection to rank $3\b|lost rank $3\b|to rank $3: Destination is unreachable"; then
		echo yes >"$d/cause"
	else
		echo NO >"$d/cause"
	fi
}

actions=(kill stop close linkdown)
ranks=(0 1 2)
whens=(boot 1 opt)
if [ "$(id -u)" -ne 0 ]; then
	echo "# faults: not root: the link-down cases need network namespaces; they are skipped" >&2
	actions=(kill stop close)
fi
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
printf '# fault matrix: 3 stages, tiny model, emulate:fwd=5ms,bwd=10ms, --timeout %d s, bound %d s, %d cases, %d at a time\n' \
	$T $BOUND $total "$jobs"
printf '#  %4s %-9s %-11s %-12s %5s %7s %6s %6s %7s %5s  %s\n' case fault stage when exit secs cause procs trace net verdict
failed=0
for ((c = 0; c < total; c++)); do
	read -r a r w <<<"${desc[$c]}"
	d="$work/case$c"
	rc=$(cat "$d/rc" 2>/dev/null || echo '?')
	secs=$(cat "$d/secs" 2>/dev/null || echo 999)
	cause=$(cat "$d/cause" 2>/dev/null || echo '?')
	left=$(cat "$d/left" 2>/dev/null || echo '?')
	trace=$(cat "$d/trace" 2>/dev/null || echo '?')
	net=$(cat "$d/net" 2>/dev/null || echo '?')
	ok=PASS
	[ "$rc" = 1 ] || ok=FAIL
	awk -v s="$secs" -v b=$BOUND 'BEGIN { exit !(s <= b) }' || ok=FAIL
	[ "$cause" = yes ] && [ "$left" = 0 ] && [ "$trace" = intact ] && [ "$net" = 0 ] || ok=FAIL
	[ $ok = PASS ] || failed=$((failed + 1))
	printf '   %4d %-9s %-11s %-12s %5s %7.1f %6s %6s %7s %5s  %s\n' $c "$a" "$r (${stage_name[$r]})" "$(when_name "$w")" \
		"$rc" "$secs" "$cause" "$left" "$trace" "$net" $ok
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
