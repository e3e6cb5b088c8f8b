#!/bin/sh
# A private one-node Slurm for tests/test_bench_sweep_dist.c: `up DIR` starts munged (as
# the munge user, its own socket), slurmctld and slurmd with DIR/slurm.conf (own ports,
# state and logs under DIR; the machine's /etc/slurm is not touched) and waits until the
# node is idle; `down DIR` stops each by its pid file. Prints SKIP: REASON and exits 3
# where Slurm or munge is not installed.
set -u
cmd=$1 D=$2
case $cmd in
up)
	for b in munged slurmctld slurmd srun sinfo; do
		command -v $b >/dev/null 2>&1 || [ -x /usr/sbin/$b ] || { echo "SKIP: $b is absent (apt-get install slurm-wlm munge)"; exit 3; }
	done
	[ -r /etc/munge/munge.key ] || { echo "SKIP: /etc/munge/munge.key is absent"; exit 3; }
	mkdir -p "$D/munge" "$D/spool" "$D/state" && chown munge:munge "$D/munge" || exit 1
	su -s /bin/sh munge -c "/usr/sbin/munged -S $D/munge/sock --pid-file=$D/munge/pid --log-file=$D/munge/log --seed-file=$D/munge/seed" || exit 1
	h=$(hostname)
	port=$((16000 + $$ % 2000 * 2))
	cat > "$D/slurm.conf" <<EOF
ClusterName=pn$$
SlurmctldHost=$h
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=socket=$D/munge/sock
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/ctld.pid
SlurmdPidFile=$D/d.pid
SlurmctldLogFile=$D/ctld.log
SlurmdLogFile=$D/d.log
SchedulerType=sched/builtin
SelectType=select/linear
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$h CPUs=$(nproc) State=UNKNOWN
PartitionName=pn Nodes=$h Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
	/usr/sbin/slurmctld -f "$D/slurm.conf" && /usr/sbin/slurmd -f "$D/slurm.conf" || exit 1
	for i in $(seq 60); do
		SLURM_CONF=$D/slurm.conf sinfo -h -o %t 2>/dev/null | grep -q idle && exit 0
		sleep 0.5
	done
	echo "the private Slurm's node did not become idle within 30 s"
	exit 1
	;;
down)
	for f in "$D/d.pid" "$D/ctld.pid" "$D/munge/pid"; do
		[ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
	done
	exit 0
	;;
esac
echo "usage: $0 up|down DIR" >&2
exit 2
