#!/usr/bin/env bash
# Code-health check of function and file lengths (issue 17's rule: no function over 120
# lines, no .c file over 700 lines) in bench/ pipeline/ netem/ models/ schedules/.
# Prints the ten longest functions (file:line, length, name) and every .c file over the
# limit; exits 1 when a limit is exceeded or when a file breaks the layout this awk relies
# on, 0 otherwise.
# A function is what this project's style writes: its signature starts at column 0 (on
# one line or continued on indented lines), the line before its body ends in ')', the
# body opens with '{' alone on a line and closes with '}' alone on a line. Its length is
# counted from the signature's first line to the closing '}'. One-line functions
# (`int f(void) { return x; }`) are single lines and not counted.
set -u
cd "$(dirname "$0")/../.."
FUNC_MAX=${FUNC_MAX:-120}
FILE_MAX=${FILE_MAX:-700}
dirs=(bench pipeline netem models schedules)
files=$(find "${dirs[@]}" \( -name '*.c' -o -name '*.cu' \) 2>/dev/null | sort)
[ -n "$files" ] || { echo "lengths.sh: no .c files under ${dirs[*]}" >&2; exit 2; }
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# One record per function: "length<TAB>file:line<TAB>name"; style problems go to stderr
# prefixed "style:" and are counted.
# shellcheck disable=SC2086
awk -v out="$tmp" '
FNR == 1 { sig = 0; infn = 0; prev = "" }
{
    line = $0
    if (infn) {
        if (line == "}") {
            printf "%d\t%s:%d\t%s\n", FNR - start + 1, FILENAME, start, name > out
            infn = 0
        } else if (line ~ /^[A-Za-z_].*\)$/ && line !~ /;$/) {
            printf "style: %s:%d: a new signature inside the function that starts at line %d\n", FILENAME, FNR, start > "/dev/stderr"
            bad++
        }
    } else if (line == "{") {
        if (prev !~ /\)$/ || !sig) {
            printf "style: %s:%d: a body opens without a signature ending in \")\" before it\n", FILENAME, FNR > "/dev/stderr"
            bad++
        }
        infn = 1
        start = sig ? sig : FNR
        name = signame
    } else if (line ~ /^[A-Za-z_][^=]*\(/ && line !~ /[;{}]$/) {
        # a column-0 line that may start a signature (continued lines are indented)
        sig = FNR
        signame = line
        sub(/\(.*/, "", signame)
        n = split(signame, w, /[ *]+/)
        signame = w[n]
    } else if (line ~ /^[A-Za-z_].*\) *\{$/ && line !~ /=/) {
        printf "style: %s:%d: the opening brace of a function is on its signature line\n", FILENAME, FNR > "/dev/stderr"
        bad++
    } else if (line !~ /^[ \t]/ && line != "") {
        sig = 0
    }
    if (line != "")
        prev = line
}
ENDFILE {
    if (infn) {
        printf "style: %s:%d: the function that starts here has no closing \"}\" at column 0\n", FILENAME, start > "/dev/stderr"
        bad++
    }
}
END { exit bad > 0 }
' $files
style=$?
status=0
echo "# the ten longest functions in ${dirs[*]} (limit $FUNC_MAX lines)"
printf '# %-6s %-40s %s\n' lines where function
sort -t$'\t' -k1,1nr "$tmp" | head -10 | awk -F'\t' '{printf "  %-6d %-40s %s\n", $1, $2, $3}'
over=$(awk -F'\t' -v m="$FUNC_MAX" '$1 > m' "$tmp" | sort -t$'\t' -k1,1nr)
if [ -n "$over" ]; then
    echo "# functions over $FUNC_MAX lines:"
    echo "$over" | awk -F'\t' '{printf "  %-6d %-40s %s\n", $1, $2, $3}'
    status=1
fi
echo "# .c files over $FILE_MAX lines"
big=0
for f in $files; do
    n=$(wc -l < "$f")
    if [ "$n" -gt "$FILE_MAX" ]; then
        printf '  %-6d %s\n' "$n" "$f"
        big=1
    fi
done
[ "$big" = 0 ] && echo "  none"
[ "$big" = 1 ] && status=1
if [ "$style" != 0 ]; then
    echo "# FAILED: the layout above does not hold in some files (see style: lines); lengths may be wrong"
    exit 1
fi
[ "$status" = 0 ] && echo "# OK" || echo "# FAILED"
exit "$status"
