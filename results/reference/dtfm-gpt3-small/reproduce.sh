#!/usr/bin/env bash
# DT-FM's published GPT-3 small table reproduced (`make reproduce-dtfm`): the emulated V100's
# fp32 efficiency fitted to ONE published cell (GPipe, default network, micro-batch 1) by
# bisection on the simulator's a-priori prediction, then the whole grid measured with that one
# efficiency, and table.md comparing published, measured and predicted cell by cell.
# usage: reproduce.sh [--out DIR] [pipenem sweep grid options, e.g. --profiles default
#        --micro-batch-sizes 1 --iters 1 for a short try]     (from anywhere; about 15 minutes)
# DIR (default: this folder) receives table.md, fit.txt, sim.csv, command.txt and sweep/
# (the sweep's small files); the whole sweep (ops.csv, trace.json, plots) stays in
# results/dtfm-gpt3-small-DATE/.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.."
out=$here
args=; [ $# -eq 0 ] || args=$(printf ' %q' "$@")
if [ "${1:-}" = "--out" ]; then
	[ $# -ge 2 ] || { echo "reproduce.sh: --out needs a folder" >&2; exit 2; }
	out=$2; shift 2
fi
mkdir -p "$out"
bin=${PIPENEM:-./pipenem}
ref=${PIPENEM_DTFM_REF:-../shared/reference/dtfm-gpt3-small.md}
[ -x "$bin" ] || { echo "reproduce.sh: no $bin (run make all first)" >&2; exit 2; }
[ -r "$ref" ] || { echo "reproduce.sh: cannot read the published table $ref" >&2; exit 2; }
# DT-FM's configuration (3 V100 hosts, fp32, batch 64, seq 2048); pinned here because the
# fit is only valid for the configuration it was made for
model=(--model gpt3-small --stages 3 --batch-size 64 --seq-len 2048)
iters=(--iters 3 --warmup 1)
fit_sched=gpipe fit_setting=default fit_mbs=1

# The fitted cell's published time, parsed from the reference (GPipe table, default row, mbs 1)
target=$(awk -F'|' -v col="Micro batch size: $fit_mbs" '
	/^## / { s = tolower($0); sub(/^## */, "", s); next }
	s == "gpipe" && $2 ~ /Network setting/ { for (i = 3; i < NF; i++) if (index($i, col)) c = i; next }
	s == "gpipe" && c && $2 ~ /^ *default/ { t = $c; gsub(/[ s]/, "", t); print t; exit }' "$ref")
[ -n "$target" ] || { echo "reproduce.sh: no GPipe / default / micro-batch $fit_mbs cell in $ref" >&2; exit 1; }

# the simulator's a-priori iteration time (s) of the fitted cell at efficiency $1: no link
# model, as for pipenem's `default` profile (unshaped)
apriori() {
	"$bin" sim "${model[@]}" -s "$fit_sched" -u "$fit_mbs" \
		-c "emulate:v100,fp32,eff=$1" 2>/dev/null | awk -v s="$fit_sched" '$1 == s { print $3 / 1000 }'
}
# fewer FLOP/s make a slower iteration: bisect efficiency in (0, 1] to 1e-5 relative
lo=0.01 hi=1
for _ in $(seq 40); do
	mid=$(awk -v a="$lo" -v b="$hi" 'BEGIN { printf "%.8f", (a + b) / 2 }')
	t=$(apriori "$mid")
	[ -n "$t" ] || { echo "reproduce.sh: pipenem sim failed at eff=$mid" >&2; exit 1; }
	if awk -v t="$t" -v g="$target" 'BEGIN { exit !(t > g) }'; then lo=$mid; else hi=$mid; fi
	awk -v a="$lo" -v b="$hi" 'BEGIN { exit !((b - a) / b < 1e-5) }' && break
done
eff=$(awk -v a="$lo" -v b="$hi" 'BEGIN { printf "%.4f", (a + b) / 2 }')
fitted=$(apriori "$eff")
awk -v t="$fitted" -v g="$target" 'BEGIN { exit !(t / g > 0.999 && t / g < 1.001) }' ||
	{ echo "reproduce.sh: no efficiency in (0, 1] predicts ${target} s (eff=$eff predicts $fitted s)" >&2; exit 1; }
compute="emulate:v100,fp32,eff=$eff"
echo "# fitted: $compute predicts $fitted s for $fit_sched / $fit_setting / micro-batch $fit_mbs (published $target s)"

work=${PIPENEM_DTFM_WORK:-results/dtfm-gpt3-small-$(date +%Y%m%d-%H%M%S)}
"$bin" sweep "${model[@]}" --compute "$compute" "${iters[@]}" --out "$work" "$@"

# The boundary tensors must be DT-FM's fp32 ones: seq x hidden x 4 bytes (6.3 MB) per sequence
awk -v cols=cell,micro_batch_size -f "$here/csvcols.awk" "$work/runs.csv" >"$work/cell-mbs.tsv"
awk -v cols=cell,op,bytes -f "$here/csvcols.awk" "$work/ops.csv" |
awk -F'\t' 'FILENAME != "-" { mbs[$1] = $2; next }
	toupper($2) ~ /^SEND/ { n++; want = 2048 * 768 * 4 * mbs[$1]
		if ($3 != want) { printf "reproduce.sh: cell %s sends %s bytes, fp32 boundaries are %d\n", $1, $3, want > "/dev/stderr"
			bad = 1; exit 1 } }
	END { if (bad) exit 1; if (!n) { print "reproduce.sh: no send in ops.csv" > "/dev/stderr"; exit 1 }
		printf "# boundary tensors: %d sends, each 2048 x 768 x 4 bytes (6291456) per sequence\n", n }' "$work/cell-mbs.tsv" -

# one send stream per stage (DT-FM's runtime): the simulator with blocking sends, same costs
echo "schedule,micro_batch_size,profile,sim_blocking_s" >"$out/sim.csv.tmp"
awk -v cols=schedule,micro_batch_size,profile -f "$here/csvcols.awk" "$work/runs.csv" |
while IFS=$'\t' read -r s u p; do
	net=(); [ "$p" = default ] || net=(-N "$p")
	t=$("$bin" sim "${model[@]}" -s "$s" -u "$u" -c "$compute" --send-mode blocking "${net[@]}" |
		awk -v s="$s" '$1 == s { print $3 / 1000 }')
	[ -n "$t" ] || echo "reproduce.sh: pipenem sim failed for $s / $p / micro-batch $u (its cell reads n/a)" >&2
	printf '%s,%s,"%s",%s\n' "$s" "$u" "${p//\"/\"\"}" "$t"
done >>"$out/sim.csv.tmp"
mv "$out/sim.csv.tmp" "$out/sim.csv"

mkdir -p "$out/sweep"
for f in runs.csv iterations.csv table.md command.txt environment.txt sweep.args; do cp "$work/$f" "$out/sweep/$f"; done
{
	echo "fitted_schedule: $fit_sched"
	echo "fitted_setting: $fit_setting"
	echo "fitted_mbs: $fit_mbs"
	echo "published_s: $target"
	echo "compute: $compute"
	echo "apriori_s: $fitted"
} >"$out/fit.txt"
{ [ -z "$args" ] && echo "make reproduce-dtfm"; echo "bash results/reference/dtfm-gpt3-small/reproduce.sh$args"; } >"$out/command.txt"
echo "pipenem $(cat "$work/command.txt")" >>"$out/command.txt"
bash "$here/compare.sh" "$ref" "$out/sweep/runs.csv" "$out/sim.csv" "$out/fit.txt" >"$out/table.md.tmp"
mv "$out/table.md.tmp" "$out/table.md"
echo "# wrote $out/table.md (the whole sweep: $work)"
