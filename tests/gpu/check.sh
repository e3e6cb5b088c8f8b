#!/usr/bin/env bash
# Every GPU test and benchmark of the cuda backend in one go, for a machine with an NVIDIA
# GPU, from what travels with the working tree: `make gpu-pack` here writes
# build-gpu/pack.tar.gz (binaries + the shared libraries a bare machine lacks); this script
# unpacks it, finds cuBLAS on the machine (CUDA toolkit or the nvidia-cublas wheel), and runs
#   unit      host-side unit tests (precision, devices, loss scale, options)
#   probe     can `--compute cuda` run here at all? (else every GPU step SKIPs with the reason)
#   compare   cuda vs cpu: loss, every gradient by name, parameters after 3 AdamW steps,
#             tiny and d=768 T=256 2 layers (one per stage), plain/recompute/tied, each
#             precision; the forced fp16 overflow (tests/test_models_cuda_gpu.c)
#   pipeline  a 3-process `pipenem run --compute cuda` on one GPU: losses match --stages 1,
#             and the memory column reports the stages' device memory
#   fp16-agree  3 processes on cuda:fp16, stage 1's gradients forced to overflow
#             (PIPENEM_FAULT=overflow:1:1): every stage skips that step, the scale halves
#   dp        `run --stages 2 --dp 2` on one GPU (gradients all-reduced through pinned host
#             memory over UCX): per iteration the losses of `--stages 2 --batch-size 8`,
#             one pipeline on the union of the two replicas' shards, within 1e-5 relative
#   dp-fp16   the same on cuda:fp16 with rank 3 (replica 1) forced to overflow: all 4 skip
#   memcheck, racecheck   compute-sanitizer over a `tiny` calibrate run, where it runs
#   nccl      --transport nccl: SKIP on one GPU; on >= 2, 3 stages give ucx's losses and a
#             killed rank ends the run naming it
#   bench     gpt3-small 4-layer stage vs cuBLAS on the same GEMMs, MFU (bench_models_cuda)
# and ends with "gpu: N passed, N failed, N skipped" (exit 0 only without failures).
# Logs go to $OUT when set (the device tool), else to a temporary folder.
# usage: tests/gpu/check.sh [PACK_DIR=build-gpu]   (or a native build: BUILD=build tests/gpu/check.sh)
# PN_GPU_QUICK=1 trims the comparisons (every precision and variant on tiny, the plain
# variant on d=768) and the benchmark (micro-batch 1 and 4) to a few minutes. A time budget
# (PN_GPU_BUDGET seconds, 540 by default: the device tool's 600 s per command) SKIPs the
# steps that would start after it is spent, so the summary always prints.
# PN_GPU_COMPUTE=cpu runs the pipeline and dp steps' plumbing on cpu (for testing this
# script: `make -j2 all && BUILD=build PN_GPU_COMPUTE=cpu bash tests/gpu/check.sh`); without
# a GPU the other GPU steps then SKIP and those two run on cpu. PN_GPU_COMPUTE_FP16 does the
# same for the fp16 steps (emulate:v100,fp16 keeps cuda:fp16's loss-scale schedule).
set -u
cd "$(dirname "$0")/../.."
pack=${1:-build-gpu}
logs=${OUT:-$(mktemp -d /tmp/pn-gpu-logs.XXXXXX)}
mkdir -p "$logs"
passed=0 failed=0 skipped=0
results=()
budget=${PN_GPU_BUDGET:-540}
quick=${PN_GPU_QUICK:-0}

note() { printf '# %s\n' "$*"; }
record() { # NAME RESULT(pass|fail|skip) DETAIL
	case $2 in pass) passed=$((passed + 1)) ;; fail) failed=$((failed + 1)) ;; *) skipped=$((skipped + 1)) ;; esac
	results+=("$(printf '%-10s %-5s %s' "$1" "$2" "$3")")
	note "$1: $2${3:+ ($3)}"
}
finish() {
	echo "#"
	printf '#   %s\n' "${results[@]}"
	echo "# logs: $logs"
	echo "gpu: $passed passed, $failed failed, $skipped skipped"
	[ "$failed" -eq 0 ]
	exit $?
}

# ---- the binaries: the pack, or a native build
bin= lib=
if [ -f "$pack/pack.tar.gz" ]; then
	work=$(mktemp -d /tmp/pn-gpu.XXXXXX)
	trap 'rm -rf "$work"' EXIT
	tar xzf "$pack/pack.tar.gz" -C "$work" || { record unpack fail "cannot unpack $pack/pack.tar.gz"; finish; }
	bin=$work/bin lib=$work/lib
	t_unit=$bin/test_models_cuda t_cmp=$bin/test_models_cuda_gpu t_bench=$bin/bench_models_cuda pipenem=$bin/pipenem
elif [ -x "${BUILD:-build}/pipenem" ] && [ -x "${BUILD:-build}/tests/test_models_cuda_gpu" ]; then
	b=${BUILD:-build}
	t_unit=$b/tests/test_models_cuda t_cmp=$b/tests/test_models_cuda_gpu t_bench=$b/tests/bench_models_cuda
	pipenem=$b/pipenem
else
	record setup fail "no $pack/pack.tar.gz and no ${BUILD:-build}/ with the cuda tests: run 'make gpu-pack' where it builds"
	finish
fi
export LD_LIBRARY_PATH=${lib}${lib:+:}${LD_LIBRARY_PATH:-}
export PIPENEM=$pipenem

# ---- shared libraries: the pack's, then cuBLAS (dlopen'ed by the first cuda stage: the
# binary's rpath, else wherever this machine keeps it)
missing=$(ldd "$pipenem" 2>/dev/null | awk '/not found/ {print $1}' | tr '\n' ' ')
if [ -n "$missing" ]; then
	record libraries fail "not found on this machine nor in the pack: $missing"
	finish
fi
so=$(grep -aom1 'libcublas\.so\.[0-9][0-9]*' "$pipenem")
blas=
for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib \
	/usr/lib/x86_64-linux-gnu /usr/lib64; do
	[ -e "$d/$so" ] && { blas=$d/$so; break; }
done
if [ -z "$blas" ]; then # pip wheels (nvidia-cublas, PyTorch's dependencies)
	blas=$(find /usr/local/lib /usr/lib/python3* /opt /root/.local -name "$so" 2>/dev/null | head -1)
fi
[ -n "$blas" ] && export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$(dirname "$blas")
note "$(date -u +%FT%TZ) $(uname -n): $( (nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi') | head -1)"
note "cuBLAS: ${blas:-$so not found (the probe says what the backend makes of it)}"

# A step of LIMIT seconds may start while it fits in what is left of the budget (its limit
# cut to that); else it is recorded as skipped. Sets $limit.
fits() { # NAME LIMIT
	local left=$((budget - SECONDS))
	if [ "$left" -lt 30 ]; then
		record "$1" skip "the ${budget}s budget is spent (${SECONDS}s so far)"
		return 1
	fi
	limit=$(($2 < left ? $2 : left))
}

# ---- a cmocka program: pass/fail/skip from its summary lines
cmocka_step() { # NAME LIMIT PROGRAM
	local name=$1 limit prog=$3 log=$logs/$1.log
	fits "$name" "$2" || return 0
	note "--- $name: $prog (limit ${limit}s)"
	timeout -k 10 "$limit" "$prog" >"$log" 2>&1
	local rc=$? p f s
	cat "$log"
	p=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
	f=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
	s=$(grep -E '^\[  SKIPPED \] [0-9]+ test' "$log" | awk '{s+=$4} END {print s+0}')
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		record "$name" fail "exit status $rc (124: over ${limit}s)"
	elif [ "$f" -gt 0 ]; then
		record "$name" fail "$f of $((p + f + s)) failed"
	elif [ "$p" -eq 0 ] && [ "$s" -gt 0 ]; then
		record "$name" skip "$(grep -m1 -o 'SKIP: .*' "$log")"
	else
		record "$name" pass "$p passed, $s skipped"
	fi
}

cmocka_step unit 120 "$t_unit"

# ---- probe: one tiny calibrate step on the GPU
note "--- probe"
probe_log=$logs/probe.log
gpu=1
if ! timeout -k 10 120 "$pipenem" calibrate --model tiny --seq-len 32 --compute cuda --iters 1 --warmup 0 >"$probe_log" 2>&1; then
	cat "$probe_log"
	why=$(grep -m1 -o 'cuda: .*' "$probe_log" || tail -1 "$probe_log")
	if [ "${PN_GPU_COMPUTE:-cuda}" != cpu ]; then
		for s in compare pipeline fp16-agree dp-fp16 dp memcheck racecheck bench; do record "$s" skip "no usable GPU: $why"; done
		finish
	fi
	gpu=0 # the plumbing test: the cpu steps only
	for s in compare memcheck racecheck bench; do record "$s" skip "no usable GPU: $why"; done
	[ "${PN_GPU_COMPUTE_FP16:-cuda:fp16}" != cuda:fp16 ] ||
		for s in fp16-agree dp-fp16; do record "$s" skip "no usable GPU: $why"; done
else
	cat "$probe_log"
	record probe pass "$(grep -m1 '^# compute' "$probe_log" | cut -c3-)"
	cmocka_step compare "$([ "$quick" = 1 ] && echo 240 || echo 900)" "$t_cmp"
fi

# ---- pipeline: 3 processes on one GPU against one
note "--- pipeline"
run_losses() { # STAGES LOG [more options, the later winning] -> the loss column of the iteration rows
	local stages=$1 log=$2
	shift 2
	timeout -k 10 120 "$pipenem" run --stages "$stages" --model tiny --compute "${PN_GPU_COMPUTE:-cuda}" --seq-len 64 \
		--batch-size 4 --micro-batch-size 2 --iters 3 --warmup 0 --net default "$@" >"$log" 2>&1 || return 1
	awk '/^ +[0-9]+ +[0-9.]+ +[-0-9.e+]+ +[0-9.]+ *$/ {print $3}' "$log"
}
losses_within() { # NAME_A LOSSES_A NAME_B LOSSES_B TOL: prints a line per iteration and sets
	# $worst (the largest relative difference); 0 if as many iterations and worst <= TOL
	local cmp
	cmp=$(paste <(echo "$2") <(echo "$4") | awk -v a="$1" -v b="$3" '{d = $1 - $2; if (d < 0) d = -d;
		r = d / ($1 < 0 ? -$1 : $1); if (r > w) w = r;
		printf "#   iteration %d: %s %s, %s %s, rel %.2e\n", NR - 1, a, $1, b, $2, r} END {printf "worst %.3e\n", w}')
	echo "$cmp"
	worst=$(echo "$cmp" | awk '/^worst/ {print $2}')
	[ "$(echo "$2" | wc -l)" -eq "$(echo "$4" | wc -l)" ] && awk -v w="$worst" -v t="$5" 'BEGIN {exit !(w <= t)}'
}
if ! fits pipeline 240; then
	:
elif l1=$(run_losses 1 "$logs/pipeline-1.log") && l3=$(run_losses 3 "$logs/pipeline-3.log") && [ -n "$l1" ]; then
	losses_within "1 stage" "$l1" "3 stages" "$l3" 1e-5
	same=$?
	# the per-stage rows: stage TFLOP/s MFU peak_mem wait_cpu memory skipped
	mem=$(awk '/\(steps\)/ {on = 1; next} on && /^ +[0-9]+ / {printf "%s%s %s MiB", n++ ? ", " : "", $6, $4}' \
		"$logs/pipeline-3.log")
	grep -A4 '(steps)' "$logs/pipeline-3.log"
	if [ "$same" -ne 0 ]; then
		record pipeline fail "losses differ: worst relative $worst (tol 1e-5)"
	elif [ "${PN_GPU_COMPUTE:-cuda}" = cuda ] && [ "$(grep -o 'device' <<<"$mem" | wc -l)" -ne 3 ]; then
		record pipeline fail "losses match, but the memory column is not every stage's device memory: $mem"
	else
		record pipeline pass "3 stages match 1 within $worst (tol 1e-5); memory $mem"
	fi
else
	tail -20 "$logs"/pipeline-*.log
	record pipeline fail "pipenem run --compute cuda failed (logs pipeline-1.log, pipeline-3.log)"
fi

# ---- fp16: one rank overflows, every rank skips that step and halves its scale
fp16_agree() { # NAME FAULT_RANK WANT_SKIPS [run options]: PIPENEM_FAULT=overflow:RANK:1
	local name=$1 fr=$2 want=$3 log=$logs/$1.log rc scales skips
	shift 3
	note "--- $name"
	fits "$name" 120 || return 0
	PIPENEM_FAULT=overflow:$fr:1 timeout -k 10 "$limit" "$pipenem" run --model tiny \
		--compute "${PN_GPU_COMPUTE_FP16:-cuda:fp16}" --seq-len 64 --batch-size 4 --micro-batch-size 2 --iters 4 \
		--warmup 0 --net default "$@" >"$log" 2>&1
	rc=$?
	grep -E 'overflow|^ +[0-9]+ ' "$log" | head -12
	# the iteration rows' loss scale (5th column), then each rank's skipped steps (7th)
	scales=$(awk '/^ +[0-9]+ +[0-9.]+ +[-0-9.e+na]+ +[0-9.]+ +[0-9.e+]+/ && !on {printf "%s ", $5} /\(steps\)/ {on = 1}' "$log")
	skips=$(awk '/\(steps\)/ {on = 1; next} on && /^ +[0-9]+ / {printf "%s ", $7}' "$log")
	if [ "$rc" -eq 0 ] && [ "$scales" = "65536 65536 32768 32768 " ] && [ "$skips" = "$want" ]; then
		record "$name" pass "rank $fr overflowed in iteration 1: every rank skipped it (skipped $skips), scale $scales"
	else
		record "$name" fail "exit $rc: loss scale per iteration '$scales' (want 65536 65536 32768 32768), skipped per rank '$skips' (want $want)"
	fi
}
if [ "$gpu" = 1 ] || [ "${PN_GPU_COMPUTE_FP16:-cuda:fp16}" != cuda:fp16 ]; then
	fp16_agree fp16-agree 1 "1 1 1 " --stages 3
	# --dp: replica 1's stage 1 (rank 3) overflows; replica 0 must skip with it (the ranks'
	# flags are ORed across replicas too), the mirrors averaging gradients of one scale
	fp16_agree dp-fp16 3 "1 1 1 1 " --stages 2 --dp 2
fi

# ---- dp: 2 replicas of a 2-stage pipeline on one GPU (4 processes), each stage's fp32
# gradients copied to pinned host memory, averaged over UCX and copied back before the step,
# against one pipeline on the union of the replicas' shards (replica d reads the
# micro-batches after replica d-1's, so batch 8 on one pipeline is the same data); the
# printed loss of a --dp run is the replicas' mean. The tolerance is the pipeline step's:
# only the order of the gradient sums differs.
note "--- dp"
if ! fits dp 240; then
	:
elif ld=$(run_losses 2 "$logs/dp-2x2.log" --dp 2) && lr=$(run_losses 2 "$logs/dp-ref.log" --batch-size 8) &&
	[ -n "$lr" ] && grep -q 'dp=2' "$logs/dp-2x2.log"; then
	r=fail
	losses_within "--dp 1 batch 8" "$lr" "--dp 2 batch 4 each" "$ld" 1e-5 && r=pass
	record dp "$r" "2 stages x --dp 2 against one pipeline on both shards: worst relative $worst (tol 1e-5)"
else
	tail -20 "$logs"/dp-*.log
	record dp fail "pipenem run --dp 2 --compute ${PN_GPU_COMPUTE:-cuda} failed (logs dp-2x2.log, dp-ref.log)"
fi
[ "$gpu" = 1 ] || finish

# ---- compute-sanitizer over tiny
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck racecheck; do
	note "--- $tool"
	if [ -z "$sanitizer" ]; then
		record "$tool" skip "compute-sanitizer is not installed"
		continue
	fi
	fits "$tool" 180 || continue
	log=$logs/$tool.log
	timeout -k 10 "$limit" "$sanitizer" --tool "$tool" --error-exitcode 9 "$pipenem" calibrate --model tiny --seq-len 64 \
		--micro-batch-size 2 --compute cuda --iters 1 --warmup 1 >"$log" 2>&1
	rc=$?
	tail -15 "$log"
	if grep -qiE 'device not supported|unable to (attach|initialize)|error 999|LibraryNotLoaded' "$log"; then
		record "$tool" skip "compute-sanitizer cannot run on this machine: $(grep -m1 -iE 'not supported|unable|999' "$log")"
	elif [ "$rc" -eq 0 ] && grep -q 'ERROR SUMMARY: 0 errors' "$log"; then
		record "$tool" pass "0 errors"
	else
		record "$tool" fail "exit $rc: $(grep -m1 'ERROR SUMMARY' "$log" || echo 'see the log')"
	fi
done

# ==== nccl (--transport nccl): a separate part, after the cuda backend's =================
# NCCL refuses two ranks of one communicator on the same GPU, so one GPU cannot carry a
# pipeline over nccl: SKIP there. With two or more: 3 stages over nccl give the losses of
# ucx (the same bytes moved, so the same numbers), and a rank killed mid-run ends every
# process within --timeout + 10 s, naming the cause.
note "--- nccl"
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
nccl_run() { # LOG TRANSPORT [extra args] -> the loss column
	local log=$1 tr=$2
	shift 2
	timeout -k 10 300 "$pipenem" run --stages 3 --model tiny --compute cuda --seq-len 64 --batch-size 4 \
		--micro-batch-size 2 --iters 3 --warmup 0 --net default --transport "$tr" "$@" >"$log" 2>&1 || return 1
	awk '/^ +[0-9]+ +[0-9.]+ +[-0-9.e+]+ +[0-9.]+ *$/ {print $3}' "$log"
}
if [ "${ngpu:-0}" -lt 2 ]; then
	for s in nccl-losses nccl-kill; do
		record "$s" skip "$ngpu GPU here: NCCL refuses two ranks of one communicator on the same GPU (needs >= 2)"
	done
else
	if lu=$(nccl_run "$logs/nccl-ucx.log" ucx) && ln=$(nccl_run "$logs/nccl-nccl.log" nccl) && [ -n "$lu" ]; then
		worst=$(paste <(echo "$lu") <(echo "$ln") | awk '{d = $1 - $2; if (d < 0) d = -d; r = d / ($1 < 0 ? -$1 : $1);
			if (r > w) w = r; printf "#   iteration %d: ucx %s, nccl %s\n", NR - 1, $1, $2 > "/dev/stderr"}
			END {printf "%.3e", w}')
		if [ "$(echo "$lu" | wc -l)" -eq "$(echo "$ln" | wc -l)" ] && awk -v w="$worst" 'BEGIN {exit !(w <= 1e-6)}'; then
			record nccl-losses pass "3 stages over nccl match ucx within $worst (tol 1e-6)"
		else
			record nccl-losses fail "losses differ: worst relative $worst (tol 1e-6)"
		fi
	else
		tail -20 "$logs"/nccl-*.log
		record nccl-losses fail "pipenem run --transport nccl failed (logs nccl-ucx.log, nccl-nccl.log)"
	fi
	start=$(date +%s)
	PIPENEM_FAULT=kill:1:1 nccl_run "$logs/nccl-kill.log" nccl --iters 4 --timeout 20 >/dev/null
	rc=$? took=$(($(date +%s) - start))
	tail -8 "$logs/nccl-kill.log"
	left=$(pgrep -fc -- "--transport nccl --iters 4 --timeout 20") # forked stages keep run's command line
	if [ "$rc" -ne 0 ] && [ "$took" -le 30 ] && [ "$left" -eq 0 ] && grep -qiE 'rank 1|signal 9|killed' "$logs/nccl-kill.log"; then
		record nccl-kill pass "rank 1 killed: the run failed in ${took}s naming it, no process left"
	else
		record nccl-kill fail "exit $rc after ${took}s (limit 30), $left processes left; see nccl-kill.log"
	fi
fi

cmocka_step bench "$([ "$quick" = 1 ] && echo 180 || echo 600)" "$t_bench"
finish
