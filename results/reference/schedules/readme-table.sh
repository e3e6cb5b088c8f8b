#!/usr/bin/env bash
# The README's schedule comparison, read from this folder's runs.csv (made by the command in
# command.txt) and from `pipenem schedule` (peak activations held by stage 0, counted as the
# schedule counts them: micro-batches, or micro-batch x chunk where a stage holds chunks of
# 1/v of its layers). Run from the repository root: bash results/reference/schedules/readme-table.sh
set -eu
d=$(dirname "$0")
bin=${PIPENEM:-./pipenem}
echo "| schedule | network | iteration (s) | slowdown vs its default | stage 0 peak activations | predicted / measured |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
	{ print $c["schedule"] "," $c["label"] "," $c["iter_median_s"] "," $c["predicted_s"] "," $c["micro_batches"] "," $c["stages"] }' "$d/runs.csv" |
while IFS=, read -r s label t pred m p; do
	peak=$("$bin" schedule --schedule "$s" --stages "$p" --micro-batches "$m" 2>/dev/null |
		awk '$1 == "0" && NF >= 6 { print $4; exit }')
	echo "$s,$label,$t,$pred,$peak"
done | awk -F, '{ if ($2 == "default") base[$1] = $3
	printf "| %s | %s | %.2f | %.2f | %s | %.2f |\n", $1, $2, $3, $3 / base[$1], $5, $4 / $3 }'
