# The named columns of a CSV file with a header row, tab-separated, one line per row (header
# left out): awk -v cols=schedule,label -f csvcols.awk FILE. Fields may be quoted ("a,b",
# "" for a quote), as pipenem writes a compute spec or a key=value profile.
function csvsplit(s, f,    n, i, ch, q, cur) {
	n = 0; q = 0; cur = ""
	for (i = 1; i <= length(s); i++) {
		ch = substr(s, i, 1)
		if (q && ch == "\"" && substr(s, i + 1, 1) == "\"") { cur = cur ch; i++ }
		else if (ch == "\"") q = !q
		else if (ch == "," && !q) { f[++n] = cur; cur = "" }
		else cur = cur ch
	}
	f[++n] = cur
	return n
}
BEGIN { nw = split(cols, want, ",") }
{ sub(/\r$/, ""); nf = csvsplit($0, f) }
FNR == 1 {
	for (i = 1; i <= nf; i++) at[f[i]] = i
	for (j = 1; j <= nw; j++)
		if (!(want[j] in at)) { printf "%s: no column %s\n", FILENAME, want[j] > "/dev/stderr"; exit 2 }
	next
}
{ for (j = 1; j <= nw; j++) printf "%s%s", f[at[want[j]]], j < nw ? "\t" : "\n" }
