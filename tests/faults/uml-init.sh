#!/bin/sh
# init of the user-mode Linux kernel that tests/faults/uml.sh boots: the fault matrix
# over links shaped by the real sch_netem (absent from the host kernel), delay included.
# Then SIGKILLs a real `pipenem run` over netem delay and checks `netem clear --all` restores.
# Prints its rows as "PNFAULT ..." and its status as "PNFAULTRC N", then powers off.
# Environment (from the kernel command line): PN_REPO, PN_BIN, PN_INSMOD, PN_MODDIR, PN_CASES.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /run
export PIPENEM_STATE_DIR=/run/pipenem
cd "$PN_REPO" || { echo "PNFAULT error: no repo $PN_REPO"; echo "PNFAULTRC 1"; echo o > /proc/sysrq-trigger; sleep 10; }
for m in lib/crc-ccitt.ko net/ipv6/ipv6.ko net/llc/llc.ko net/802/stp.ko net/bridge/bridge.ko \
	drivers/net/veth.ko net/sched/sch_netem.ko net/sched/sch_tbf.ko net/sched/sch_htb.ko \
	net/sched/cls_u32.ko; do
	"$PN_INSMOD" --insmod "$PN_MODDIR/kernel/$m" || echo "PNFAULT error: insmod $m"
done
mkdir -p /run/tmp
FAULT_TMP=/run/tmp FAULT_UML=0 FAULT_JOBS=1 FAULT_NOBODY=0 FAULT_PROFILE=5ms/1Gbps FAULT_NEED_QDISC=netem FAULT_CASES="$PN_CASES" \
	bash tests/faults/matrix.sh "$PN_BIN" > /run/matrix.out 2>&1
rc=$?
sed 's/^/PNFAULT /' /run/matrix.out

# SIGKILL of a real `pipenem run` holding netem delay qdiscs: no handler runs, so its
# namespaces and qdiscs stay until `pipenem netem clear --all` replays its state file.
./pipenem run --model tiny --stages 3 --compute emulate:fwd=5ms,bwd=10ms --batch-size 4 --iters 1000 \
	--net 5ms/1Gbps --emulator netem > /run/run.out 2>&1 &
runpid=$!
qd=0
for i in $(seq 1 100); do
	qd=$(for n in $(ip netns list | awk '{print $1}' | grep "^pn$runpid[a-z]*-"); do tc -n "$n" qdisc show; done |
		grep -c '^qdisc netem')
	[ "$qd" -gt 0 ] && grep -q 'rank 2: pid' /run/run.out && break
	sleep 0.2
done
sleep 1
kill -9 $runpid
wait $runpid 2>/dev/null
before=$(ip netns list | grep -c "^pn$runpid[a-z]*-")
./pipenem netem clear --all > /run/clear.out 2>&1
crc=$?
after=$(ip netns list | grep -c "^pn$runpid[a-z]*-")
state=$(ls /run/pipenem 2>/dev/null | grep -c "run-$runpid.state")
verdict=PASS
{ [ "$qd" -gt 0 ] && [ "$before" -gt 0 ] && [ $crc -eq 0 ] && [ "$after" -eq 0 ] && [ "$state" -eq 0 ]; } || verdict=FAIL
echo "PNFAULT # SIGKILL of pipenem run over 5ms/1Gbps (netem): $qd netem qdiscs before the kill, $before namespaces left, clear --all exit $crc, then $after namespaces and $state state files: $verdict"
[ $verdict = PASS ] || { rc=1; sed 's/^/PNFAULT #   | /' /run/run.out /run/clear.out | tail -n 20; }
echo "PNFAULTRC $rc"
echo o > /proc/sysrq-trigger
sleep 10
