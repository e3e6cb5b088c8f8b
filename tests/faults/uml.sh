#!/usr/bin/env bash
# The fault matrix's delay cases: boots Debian's user-mode Linux (which has sch_netem,
# unlike the host) on the host file system with tests/faults/uml-init.sh as init, which
# runs tests/faults/matrix.sh there over 5ms/1Gbps links (kernel netem) for a few cases,
# one at a time (UML has one CPU). Prints the guest's matrix with a "# uml | " prefix and
# exits with its status: 0 all passed, 1 a case failed or the guest did not finish, 2
# user-mode Linux or its sch_netem module is missing.
# usage: tests/faults/uml.sh PIPENEM WORKDIR   (root)
set -uo pipefail
bin=$(realpath "${1:?usage: uml.sh PIPENEM WORKDIR}")
work=${2:?usage: uml.sh PIPENEM WORKDIR}
repo=$(realpath "$(dirname "$0")/../..")
insmod=$(dirname "$bin")/tests/test_netem_uml   # loads modules with finit_module (no kmod in the guest)
if ! command -v linux.uml >/dev/null; then
	echo "# uml: linux.uml is missing (apt-get install user-mode-linux)"
	exit 2
fi
moddir=$(dpkg -L user-mode-linux 2>/dev/null | grep '/kernel/net/sched/sch_netem.ko$' | head -n1)
if [ -z "$moddir" ] || [ ! -x "$insmod" ]; then
	echo "# uml: user-mode-linux ships no sch_netem.ko, or $insmod is not built"
	exit 2
fi
moddir=${moddir%%/kernel/net/sched/*}
case "$repo$bin$work" in *' '*) echo "# uml: paths with spaces cannot go on the UML command line"; exit 2 ;; esac
mkdir -p "$work/uml-dir"
umid=pnf$$
# Unknown key=value kernel parameters become init's environment. No stdin: CI.
timeout -k 10 300 linux.uml umid=$umid uml_dir="$work/uml-dir" mem=1G root=/dev/root rootfstype=hostfs \
	rootflags=/ rw init="$repo/tests/faults/uml-init.sh" con=null con0=null,fd:1 PN_REPO="$repo" PN_BIN="$bin" \
	PN_INSMOD="$insmod" PN_MODDIR="$moddir" PN_CASES="${FAULT_UML_CASES:-kill:1:1|stop:0:opt|linkdown:1:1}" \
	</dev/null >"$work/console" 2>&1
rm -rf "$work/uml-dir"
sed -n 's/\r$//; s/^PNFAULT \(.*\)/# uml | \1/p' "$work/console"
rc=$(sed -n 's/\r$//; s/^PNFAULTRC \([0-9]*\)$/\1/p' "$work/console" | tail -n1)
if [ -z "$rc" ]; then
	echo "# uml: the guest did not finish the matrix (timeout 300 s); console tail:"
	tail -n 30 "$work/console" | sed 's/^/# uml console | /'
	exit 1
fi
exit "$rc"
