#!/usr/bin/env bash
# Start a single-node SLURM cluster on this host (munged + slurmctld + slurmd, no systemd) for the --platform slurm tests.
# Idempotent: installs, configures and starts only what is missing. Timings go to stderr as "slurm-up: <stage> <s>s".
# Facts: ../shared/TESTING-ENVIRONMENT.md ("A real SLURM cluster on one CI machine").
set -euo pipefail

CONF_DIR=${TAO_SLURM_CONF_DIR:-/etc/slurm}
LOG_DIR=${TAO_SLURM_LOG_DIR:-/var/log/slurm}
PARTITION=${TAO_SLURM_PARTITION:-debug}

log() { echo "slurm-up: $*" >&2; }
stage_start() { STAGE_T0=$(date +%s); }
stage_end() { log "$1 $(( $(date +%s) - STAGE_T0 ))s"; }

if [ "$(id -u)" != 0 ]; then
    log "needs root (it installs packages and starts daemons as SlurmUser=root)"
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    stage_start
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
    stage_end install
fi

node_idle() { sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

if node_idle; then
    log "cluster already up ($(sinfo -h -o '%P %D %T' | sed -n 1p))"
    exit 0
fi

stage_start
host=$(hostname -s)
cpus=$(nproc)
mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge /var/lib/munge /var/log/munge
conf="$CONF_DIR/slurm.conf"
new=$(mktemp)
cat >"$new" <<EOF
# written by tao-finetune .ci/slurm-up.sh for a single-node test cluster
ClusterName=ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
EnforcePartLimits=ALL
JobRequeue=1
MinJobAge=3600
KillWait=10
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SchedulerParameters=sched_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$new" "$conf"; then
    mv "$new" "$conf"
else
    rm -f "$new"
fi
chmod 644 "$conf"

# munge: a key owned by munge, mode 0400 (the package creates one; make one if it is missing)
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --force; else create-munge-key -f; fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
chmod 0711 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munge.socket.2.lock
    su -s /bin/sh munge -c "munged --force" 2>/dev/null || munged --force
fi
stage_end config+munge

stage_start
start_daemon() {  # name pidfile
    local name=$1 pidfile=$2
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        return 0
    fi
    rm -f "$pidfile"
    "$name"  # daemonizes; its log is in $LOG_DIR
}
start_daemon slurmctld /run/slurmctld.pid
start_daemon slurmd /run/slurmd.pid
for _ in $(seq 1 60); do
    node_idle && break
    state=$(sinfo -h -N -o '%T' 2>/dev/null || true)
    case "$state" in
        down*|drain*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
if ! node_idle; then
    log "the node did not become idle; sinfo: $(sinfo -N 2>&1 | tail -n 2)"
    tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    exit 1
fi
stage_end start
log "cluster up ($(sinfo -h -o '%P %D %T' | sed -n 1p))"
