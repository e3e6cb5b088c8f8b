#!/bin/sh
# init of the user-mode Linux kernel that tests/faults/uml.sh boots: the fault matrix
# over links shaped by the real sch_netem (absent from the host kernel), delay included.
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
echo "PNFAULTRC $rc"
echo o > /proc/sysrq-trigger
sleep 10
