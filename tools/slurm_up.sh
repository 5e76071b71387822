#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests of the cluster path (tests/test_slurm.py).
#
#   sudo bash tools/slurm_up.sh                # idempotent: installs, configures and starts what is missing
#   sudo bash tools/slurm_up.sh --no-install   # only (re)starts an installed SLURM (what the tests call)
#
# Debian's slurm-wlm and munge; slurmctld + slurmd on this host with one node of all its CPUs and
# memory, select/cons_tres, proctrack/linuxproc, task/none, no accounting (job state comes from
# squeue / scontrol, not sacct). No systemd needed. Exits 0 once `srun -n1 true` works; non-zero,
# with the reason, where it cannot (not root and SLURM absent, no apt-get, no network).
# .ci/run calls it before pytest; on a cluster nobody needs it.
set -euo pipefail
log() { echo "[slurm_up] $*" >&2; }
install=1
[ "${1:-}" = "--no-install" ] && install=0

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  [ "$install" -eq 1 ] || { log "slurm-wlm/munge are not installed (run: sudo bash tools/slurm_up.sh)"; exit 1; }
  [ "$(id -u)" -eq 0 ] || { log "slurm-wlm/munge not installed and not root: cannot install"; exit 1; }
  command -v apt-get >/dev/null || { log "slurm-wlm/munge not installed and no apt-get"; exit 1; }
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi
[ "$(id -u)" -eq 0 ] || { log "not root: cannot start munged / slurmctld / slurmd"; exit 1; }

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
conf=/etc/slurm/slurm.conf
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge

# munge: a key owned by the munge user, mode 400, and the daemon
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
if ! munge -n </dev/null >/dev/null 2>&1; then
  log "starting munged"
  su -s /bin/sh munge -c /usr/sbin/munged || runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && break; sleep 0.1; done
fi

want=$(cat <<CONF
# written by tools/slurm_up.sh: a one-node test cluster
ClusterName=studylib
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=2
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
)
restart=0
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
  printf '%s\n' "$want" > "$conf"
  restart=1
fi

# a changed slurm.conf restarts the daemons this script started (their pid files)
stop() {
  local pid; pid=$(cat "/run/$1.pid" 2>/dev/null || true)
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}
for daemon in slurmctld slurmd; do
  [ "$restart" -eq 1 ] && stop "$daemon"
  if ! pgrep -x "$daemon" >/dev/null; then
    log "starting $daemon"
    "/usr/sbin/$daemon"
  fi
done

for _ in $(seq 60); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
  case "$state" in
    idle*|mix*|alloc*) break ;;
    down*|drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
if ! timeout 60 srun -n1 -t 1 true; then
  log "srun does not run a job; see /var/log/slurm/"
  exit 1
fi
log "up: $(sinfo -h -N -o '%N %t cpus=%c mem=%m')"
