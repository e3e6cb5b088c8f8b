#!/bin/sh
# init of the user-mode Linux kernel that tests/test_netem_uml.c boots: the real sch_netem
# (absent from the host kernel) under the tc controller and the self-test. Prints
# "PNUML key value" lines for the test to judge, then powers off. Environment (from the
# kernel command line): PN_REPO, PN_TESTBIN, PN_MODDIR, PN_GP_MIN (the
# controller's goodput in Mbit/s below which it measures again).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /run
export PIPENEM_STATE_DIR=/run/pipenem
cd "$PN_REPO" || { echo "PNUML error no repo $PN_REPO"; echo o > /proc/sysrq-trigger; sleep 10; }
# Dependencies first (kmod is not needed: the test binary loads them with finit_module).
for m in lib/crc-ccitt.ko net/ipv6/ipv6.ko net/llc/llc.ko net/802/stp.ko net/bridge/bridge.ko \
	drivers/net/veth.ko net/sched/sch_netem.ko net/sched/sch_tbf.ko net/sched/sch_htb.ko \
	net/sched/cls_u32.ko; do
	"$PN_TESTBIN" --insmod "$PN_MODDIR/kernel/$m" || echo "PNUML error insmod $m"
done
echo "PNUML kernel $(uname -r) cpus $(nproc)"

# The controller on a veth between two namespaces, shaped at both ends (one direction
# each), so the ping round trip is 2 x delay.
ip netns add pnua; ip netns add pnub
ip -n pnua link add va type veth peer name vb netns pnub
ip -n pnua addr add 198.18.9.1/24 dev va; ip -n pnua link set va up; ip -n pnua link set lo up
ip -n pnub addr add 198.18.9.2/24 dev vb; ip -n pnub link set vb up; ip -n pnub link set lo up
for ns in pnua pnub; do
	ip netns exec $ns sh -c 'echo "4096 131072 33554432" > /proc/sys/net/ipv4/tcp_rmem; echo "4096 16384 33554432" > /proc/sys/net/ipv4/tcp_wmem'
done
tc -n pnua qdisc add dev va root handle 9: pfifo limit 99
echo "PNUML before_a $(tc -n pnua qdisc show dev va)"
echo "PNUML before_b $(tc -n pnub qdisc show dev vb)"
./pipenem netem apply --netns pnua va 10ms/1Gbps | sed 's/^/PNUML apply /'
./pipenem netem apply --netns pnub vb 10ms/1Gbps | sed 's/^/PNUML apply /'
echo "PNUML show_a $(./pipenem netem show --netns pnua va | tail -1)"
echo "PNUML show_b $(./pipenem netem show --netns pnub vb | tail -1)"
echo "PNUML tc_a $(tc -n pnua qdisc show dev va)"
ip netns exec pnua ping -q -c 2 -i 0.05 198.18.9.2 > /dev/null   # resolve ARP first (it is delayed too)
# The median of 20 round trips (a few stalls of the busy host must not move it).
ip netns exec pnua ping -c 20 -i 0.05 198.18.9.2 | sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n |
	awk '{ v[NR] = $1 } END { if (NR) print "PNUML ping_median_ms " (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) " of " NR }'
# Goodput as the receiver sees it: iperf3 server intervals of 0.5 s after the first
# second (slow start), median (robust to stalls of the busy host UML runs on).
iperf_median() {	# server namespace, client namespace, address
	ip netns exec $1 iperf3 -s -1 -i 0.5 -f m -B $3 > /run/iperf-server.out 2>&1 &
	sleep 0.5
	ip netns exec $2 iperf3 -c $3 -t 4 -f m > /dev/null 2>&1
	wait
	awk '/sec/ && !/receiver|sender/ { split($3, t, "-"); if (t[1] + 0 >= 1.0) print $7 }' /run/iperf-server.out |
		sort -n | awk '{ v[NR] = $1 } END { print (NR ? (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) : 0) " intervals " NR }'
}
# UML is one emulated CPU on a shared host, whose speed changes from second to second:
# up to three attempts, each after UML's own ceiling on an unshaped veth between the same
# namespaces, until one reaches PN_GP_MIN (the test's lower bound); the test judges all.
ip -n pnua link add vc type veth peer name vd netns pnub
ip -n pnua addr add 198.18.10.1/24 dev vc; ip -n pnua link set vc up
ip -n pnub addr add 198.18.10.2/24 dev vd; ip -n pnub link set vd up
for attempt in 1 2 3; do
	echo "PNUML goodput_ceiling_try$attempt $(iperf_median pnub pnua 198.18.10.2)"
	gp=$(iperf_median pnub pnua 198.18.9.2)
	echo "PNUML goodput_try$attempt $gp"
	awk -v g="${gp%% *}" -v m="${PN_GP_MIN:-0}" 'BEGIN { exit !(g + 0 >= m + 0) }' && break
done
ip -n pnua link del vc
# Every field of a key=value profile read back from the kernel.
./pipenem netem apply --netns pnua va delay=5ms,jitter=1ms,loss=0.5%,rate=100Mbps,limit=3000 > /dev/null
echo "PNUML show_kv $(./pipenem netem show --netns pnua va | tail -1)"
./pipenem netem clear --netns pnua va | sed 's/^/PNUML clear /'
./pipenem netem clear --netns pnub vb | sed 's/^/PNUML clear /'
echo "PNUML after_a $(tc -n pnua qdisc show dev va)"
echo "PNUML after_b $(tc -n pnub qdisc show dev vb)"
ip netns del pnua; ip netns del pnub

# The self-test with the kernel netem backend, and UML's own unshaped ceiling.
# UML is one emulated CPU on a shared host: up to three attempts, all reported; the
# test judges each against the UML ceiling measured just before it. The profiles stay well
# inside what the guest itself carries: at 5ms/2Gbps a slower CI host's guest delivered
# 1.6-1.77 Gbit/s in every attempt (its unshaped ceiling 2.7-5.5 Gbit/s), and its ~0.25 ms
# late timers are 5% of a 10 ms round trip: the guest, not the emulator, was measured.
for attempt in 1 2 3; do
	./pipenem netem selftest --emulator netem --ceiling --net 10ms/1Gbps --net 20ms/500Mbps > /run/selftest.out 2>&1
	rc=$?
	sed "s/^/PNUML try$attempt /" /run/selftest.out
	echo "PNUML try${attempt}_rc $rc"
	[ $rc -eq 0 ] && break
done

# Links with different profiles meeting at one host (per-source classes, netem leaves).
"$PN_TESTBIN" --perlink
# A real host's per-destination tree (netem delay to one peer only, on its own device).
"$PN_TESTBIN" --perdest
# --dp: a profile per ordered pair of hosts (pipeline pairs, replica pairs, the rest unshaped).
"$PN_TESTBIN" --perpair
echo "PNUML leftover_netns $(ip netns list | wc -l)"
echo "PNUML done"
echo o > /proc/sysrq-trigger
sleep 10
