#!/usr/bin/env bash
# The comparison of pipenem's sweep with DT-FM's published GPT-3 small table: one row per
# published cell (read from the reference .md, never retyped) with the measured, a-priori
# predicted and one-send-stream simulated times beside it and their ratios to the published.
# usage: compare.sh REFERENCE.md RUNS.csv [SIM.csv [FIT.txt]]   (markdown on stdout)
# SIM.csv: schedule,micro_batch_size,profile,sim_blocking_s (reproduce.sh writes it);
# FIT.txt: "key: value" lines of the fit (fitted_schedule, fitted_setting, fitted_mbs, ...).
set -eu
if [ $# -lt 2 ] || [ $# -gt 4 ]; then echo "usage: compare.sh REFERENCE.md RUNS.csv [SIM.csv [FIT.txt]]" >&2; exit 2; fi
ref=$1 runs=$2 sim=${3:-/dev/null} fit=${4:-/dev/null}
for f in "$ref" "$runs" "$sim" "$fit"; do
	[ -r "$f" ] || { echo "compare.sh: cannot read '$f'" >&2; exit 2; }
done
here=$(dirname "$0")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk -v cols=schedule,micro_batch_size,label,profile,iter_median_s,predicted_apriori_s,iters,warmup,compute -f "$here/csvcols.awk" "$runs" >"$tmp/runs" ||
	{ echo "compare.sh: $runs is not a runs.csv of pipenem sweep" >&2; exit 1; }
if [ -s "$sim" ]; then
	awk -v cols=schedule,micro_batch_size,profile,sim_blocking_s -f "$here/csvcols.awk" "$sim" >"$tmp/sim" || exit 1
else
	: >"$tmp/sim"
fi
awk -v ref="$ref" -v runs="$tmp/runs" -v sim="$tmp/sim" -v fit="$fit" '
function trim(s) { gsub(/^[ \t]+|[ \t]+$/, "", s); return s }
# a network setting as both tables name it: spaces collapsed; DT-FM calls the unshaped
# network "default (about 0.1ms; up to 10Gbps)", pipenem "default"
function setting(s) { s = trim(s); gsub(/[ \t]+/, " ", s); if (s ~ /^default( |$)/) s = "default"; return s }
function fmt(x) { return x == "" ? "n/a" : sprintf("%.2f s", x) }
function ratio(a, b) { return a == "" || b == "" || b + 0 <= 0 ? "n/a" : sprintf("%.3f", a / b) }
function span(what, x, lo_hi) { if (x == "") return; n[what]++
	if (!(what in lo) || x < lo[what]) lo[what] = x; if (!(what in hi) || x > hi[what]) hi[what] = x }
function range(what) { return n[what] ? sprintf("%.3f-%.3f over %d cells", lo[what], hi[what], n[what]) : "no cell" }
function die(msg) { print "compare.sh: " msg > "/dev/stderr"; bad = 1; exit 1 }
BEGIN {
	FS = "\t"
	while ((getline line < runs) > 0) {
		split(line, f, "\t")
		k = f[1] SUBSEP f[2] SUBSEP setting(f[3])
		meas[k] = f[5]; apr[k] = f[6]; prof[f[4]] = setting(f[3])
		iters = f[7]; warmup = f[8]; compute = f[9]
	}
	while ((getline line < sim) > 0) {
		split(line, f, "\t")
		blk[f[1] SUBSEP f[2] SUBSEP prof[f[3]]] = f[4]
	}
	while ((getline line < fit) > 0)
		if ((p = index(line, ":")) > 0) fitv[trim(substr(line, 1, p - 1))] = trim(substr(line, p + 1))
	FS = "|"
	while ((getline line < ref) > 0) {
		if (line ~ /^## /) { sched = tolower(trim(substr(line, 4))); ncol = 0; continue }
		if (line !~ /^\|/ || line ~ /^\|[- |]*$/) continue
		nf = split(line, f, "|")
		if (f[2] ~ /Network setting/) {
			for (i = 3; i < nf; i++) { mbs[i] = trim(f[i]); sub(/.*: */, "", mbs[i]) }
			ncol = nf; continue
		}
		if (!ncol || sched == "") continue
		for (i = 3; i < nf; i++) {
			t = trim(f[i])
			if (t !~ /^[0-9.]+ s$/) die(ref ": cell \"" t "\" of " sched " / " trim(f[2]) " is not a time in seconds")
			sub(/ s$/, "", t)
			cells++; cs[cells] = sched; cm[cells] = mbs[i]; cn[cells] = setting(f[2]); cpub[cells] = t
		}
	}
	if (!cells) die(ref ": no published cell (expected \"## GPipe\" / \"## 1F1B\" tables)")
}
END {
	if (bad) exit 1
	fs = tolower(fitv["fitted_schedule"]); fn = setting(fitv["fitted_setting"]); fm = fitv["fitted_mbs"]
	print "# DT-FM GPT-3 small: published, measured and predicted"
	print ""
	printf "Published: `%s` (DT-FM on 3 AWS p3.2xlarge hosts, one V100 each, PyTorch + NCCL, fp32, batch 64, sequence 2048, mean of 10 iterations, tc netem on each NIC). ", ref
	printf "Measured: `pipenem sweep` with `--compute %s` (3 stages, one process each on this machine, median of %s measured iterations after %s warm-up; the sweep itself is in `sweep/`). ", compute, iters, warmup
	if ("compute" in fitv)
		printf "Fit: the one efficiency for which the simulator predicts the %s / %s / micro-batch %s cell a priori as published (%s s: `%s` predicts %s s), found by bisection; no other cell is tuned.\n", fitv["fitted_schedule"], fitv["fitted_setting"], fitv["fitted_mbs"], fitv["published_s"], fitv["compute"], fitv["apriori_s"]
	print ""
	print "Columns: Published, DT-FM; Measured, pipenem (UCX over TCP between the stage processes; how each setting was shaped: `sweep/table.md`); A-priori, the simulator from the device model and the profile (delay, TCP goodput of the rate), pipelined sends, nothing measured (the sweep'"'"'s `predicted_apriori_s`); One send stream, `pipenem sim --send-mode blocking` with the same costs and the nominal rate: each stage'"'"'s next send waits for its previous one, as on DT-FM'"'"'s single send stream."
	print ""
	print "| Schedule | Network setting | Micro batch size | Published | Measured | Measured / published | A-priori | A-priori / published | One send stream | One stream / published |"
	print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	for (i = 1; i <= cells; i++) {
		k = cs[i] SUBSEP cm[i] SUBSEP cn[i]
		m = k in meas ? meas[k] : ""; a = k in apr ? apr[k] : ""; b = k in blk ? blk[k] : ""
		fitted = cs[i] == fs && cn[i] == fn && cm[i] == fm
		printf "| %s | %s | %s | %s%s | %s | %s | %s | %s | %s | %s |\n", cs[i], cn[i], cm[i], fmt(cpub[i]),
			fitted ? " (fitted)" : "", k in meas ? (m == "" ? "failed" : fmt(m)) : "not run",
			ratio(m, cpub[i]), fmt(a), ratio(a, cpub[i]), fmt(b), ratio(b, cpub[i])
		if (m != "") { span("measured " cs[i], m / cpub[i]); if (!fitted) span("measured, fitted cell left out", m / cpub[i]) }
		if (a != "") span("a-priori " cs[i], a / cpub[i])
		if (b != "") span("one send stream " cs[i], b / cpub[i])
		done += m != ""
	}
	printf "\n%d of %d published cells measured.\n", done, cells
	printf "- Measured / published: gpipe %s; 1f1b %s; fitted cell left out %s.\n",
		range("measured gpipe"), range("measured 1f1b"), range("measured, fitted cell left out")
	printf "- A-priori / published: gpipe %s; 1f1b %s.\n", range("a-priori gpipe"), range("a-priori 1f1b")
	printf "- One send stream / published: gpipe %s; 1f1b %s.\n", range("one send stream gpipe"), range("one send stream 1f1b")
}' </dev/null
