#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the integration tests and for trying `shg submit`
# without a cluster. Debian 12, as root, no systemd: every daemon is started by hand.
#
#   slurm/local-cluster.sh up       install (if needed) and start munge, MariaDB + slurmdbd, slurmctld, slurmd
#   slurm/local-cluster.sh down     stop what `up` started (by pid file, never by name)
#   slurm/local-cluster.sh status   say whether the cluster answers (exit 0 if it does)
#
# Two nodes (two slurmd on this machine) and two partitions: `debug` (default, low priority) and `high`. A job in `high` that needs the CPUs of
# a `debug` job preempts it: Slurm sends SIGTERM and the job's --signal (USR2), waits GraceTime,
# then requeues it. slurm/profiles/local.toml submits to `debug`.
#
# Knobs (environment):
#   SHG_SLURM_BASE   state, logs, pid files, database     (default /tmp/shg-slurm)
#   SHG_SLURM_ACCT   slurmdbd | none                       (default slurmdbd: a real `sacct`)
#                    none: no database; a `sacct` shim answers from slurmctld's memory (faster up)
#   SHG_SLURM_CPUS   CPUs each node advertises             (default max(4, nproc): jobs may share cores)
#   SHG_SLURM_NODES  1 or 2                                (default 2)
#                    2: a second slurmd on this machine (Debian's Slurm is built with multiple-slurmd
#                    support), named `localhost` so that its name resolves, for multi-node jobs
#
# Why some settings are what they are (learned the hard way, see ../shared/slurm-local/NOTES.md):
# - without a `sacct` that works, submitit never notices a job that died without a result;
# - a requeued job is held cred_expire+1 s (121 s by default): cred_expire=5 here (6 s;
#   Slurm 22.05 accepts 5, checked by the preemption tests);
# - SlurmctldHost must be `hostname -s`; 22.05 wants SlurmctldParameters=preempt_send_user_signal;
# - killed daemons stay zombies without a real init: state Z counts as dead.
set -euo pipefail

BASE=${SHG_SLURM_BASE:-/tmp/shg-slurm}
ACCT=${SHG_SLURM_ACCT:-slurmdbd}
HOST=$(hostname -s)
NODES=${SHG_SLURM_NODES:-2}
case "$NODES" in 1) NODE_NAMES=$HOST ;; 2) NODE_NAMES="$HOST localhost" ;;
    *) echo "local-cluster: SHG_SLURM_NODES must be 1 or 2" >&2; exit 2 ;; esac
CPUS=${SHG_SLURM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}
CONF=/etc/slurm/slurm.conf
MARK="# written by shg slurm/local-cluster.sh"

say() { printf '[local-cluster %s] %s\n' "$(date +%T)" "$*"; }
die() { printf 'local-cluster: %s\n' "$*" >&2; exit 1; }
alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $s != Z* ]]; }
stop_pidfile() {  # SIGTERM, up to 15 s, then SIGKILL
    [ -s "$1" ] || return 0
    local pid; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 150); do alive "$pid" || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}
answers() { timeout 5 sinfo -h -o %T >/dev/null 2>&1; }

install_packages() {
    local want="munge slurmctld slurmd slurm-client" missing=""
    [ "$ACCT" = slurmdbd ] && want="$want slurmdbd mariadb-server"
    for p in $want; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    [ -z "$missing" ] && return 0
    command -v apt-get >/dev/null || die "missing packages:$missing (and no apt-get to install them)"
    say "installing$missing"
    # The packages' postinst scripts would start the daemons through init scripts; we start them
    # ourselves, so forbid that for the duration of the install.
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    return 0
}

start_munge() {
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key  # munged refuses a readable key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 0755 /run/munge
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
        runuser -u munge -- /usr/sbin/munged
        for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
        cp /run/munge/munged.pid "$BASE/run/munged.pid"  # ours to stop
    fi
    munge -n | unmunge >/dev/null || die "munged does not answer"
}

write_slurm_conf() {
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away first"
    fi
    mkdir -p /etc/slurm
    local mem_mb=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024 ))
    local acct
    if [ "$ACCT" = slurmdbd ]; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
    else
        acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    cat >"$CONF" <<EOF
$MARK (test cluster: one node, root, no cgroups)
ClusterName=shg
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
MinJobAge=86400
KillWait=10
InactiveLimit=0
SlurmdTimeout=30
JobRequeue=1
$acct
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
# one slurmd per node on this machine, each on its own port (6819 is slurmdbd's)
$(port=6818; for n in $NODE_NAMES; do
    echo "NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$port CPUs=$CPUS RealMemory=$(( mem_mb / NODES )) State=UNKNOWN"
    port=$(( port + 2 )); done)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=60
PartitionName=high Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

start_accounting() {
    if [ "$ACCT" = none ]; then
        install_sacct_shim; return 0
    fi
    rm -f /usr/local/bin/sacct.shg-shim
    local db=$BASE/mysql
    mkdir -p "$db" /run/mysqld; chown mysql:mysql "$db" /run/mysqld
    mariadb-install-db --user=mysql --datadir="$db" --auth-root-authentication-method=socket \
        --skip-test-db >"$BASE/log/mariadb-install.log" 2>&1
    if ! mariadb -uroot -e 'select 1' >/dev/null 2>&1; then
        setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$db" \
            --socket=/run/mysqld/mysqld.sock --pid-file="$db/mariadb.pid" \
            --log-error="$db/mariadb.err" --skip-networking --skip-log-bin \
            --innodb-buffer-pool-size=128M --innodb-flush-log-at-trx-commit=0 \
            </dev/null >/dev/null 2>&1 &
    fi
    for _ in $(seq 300); do mariadb -uroot -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
    mariadb -uroot -e 'select 1' >/dev/null 2>&1 || { tail -n 20 "$db/mariadb.err" >&2; die "MariaDB did not start"; }
    cat >/etc/slurm/slurmdbd.conf <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=shg_slurm_acct
EOF
    chmod 600 /etc/slurm/slurmdbd.conf  # slurmdbd refuses a readable conf
    /usr/sbin/slurmdbd
    for _ in $(seq 300); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.1; done
    sacctmgr -n list cluster >/dev/null 2>&1 || { tail -n 20 "$BASE/log/slurmdbd.log" >&2; die "slurmdbd did not start"; }
    sacctmgr -i add cluster shg >/dev/null 2>&1 || true
}

install_sacct_shim() {
    # `sacct -j ID -o F1,F2 --parsable2` (what submitit and `shg submit status` run) answered from
    # `squeue -t all`: finished jobs stay in slurmctld's memory for MinJobAge (a day).
    cat >/usr/local/bin/sacct <<'SHIM'
#!/usr/bin/env bash
# sacct shim from shg slurm/local-cluster.sh (SHG_SLURM_ACCT=none): answers from squeue.
if grep -q 'accounting_storage/slurmdbd' /etc/slurm/slurm.conf 2>/dev/null; then exec /usr/bin/sacct "$@"; fi
fmt="JobID,State"; jobs=""; header=1
while [ $# -gt 0 ]; do
  case "$1" in
    -o|--format) fmt=$2; shift ;; --format=*) fmt=${1#*=} ;;
    -j|--jobs) jobs="${jobs:+$jobs,}$2"; shift ;; --jobs=*) jobs="${jobs:+$jobs,}${1#*=}" ;;
    -n|--noheader) header=0 ;;
  esac
  shift
done
codes=""; IFS=, read -ra fields <<<"$fmt"
for f in "${fields[@]}"; do
  case "${f%%%*}" in
    JobID|jobid) c=%i ;; JobIDRaw|jobidraw) c=%A ;; State|state) c=%T ;; Reason|reason) c=%r ;;
    JobName|jobname) c=%j ;; NodeList|nodelist) c=%N ;; Partition|partition) c=%P ;;
    Elapsed|elapsed) c=%M ;; ExitCode|exitcode) c=%i ;; *) c=%i ;;
  esac
  codes="$codes|$c"
done
[ "$header" = 1 ] && echo "${fmt//,/|}"
squeue -h -t all -o "%i$codes" | awk -F'|' -v want="$jobs" '
  BEGIN { n = split(want, w, ","); for (i = 1; i <= n; i++) { split(w[i], p, "_"); ok[p[1]] = 1 } }
  { split($1, p, "_"); if (n == 0 || (p[1] in ok)) { sub(/^[^|]*\|/, ""); print } }'
SHIM
    chmod 755 /usr/local/bin/sacct
    touch /usr/local/bin/sacct.shg-shim
}

cmd_up() {
    [ "$(id -u)" = 0 ] || die "needs root (it installs packages and starts daemons)"
    case "$ACCT" in slurmdbd|none) ;; *) die "SHG_SLURM_ACCT must be slurmdbd or none";; esac
    local t0=$SECONDS
    install_packages
    cmd_down >/dev/null 2>&1 || true  # a previous run of ours, if any
    for d in slurmctld slurmd slurmdbd; do
        pgrep -x -r R,S,D "$d" >/dev/null && die "a $d not started by this script runs; stop it first"
    done
    rm -rf "$BASE"; mkdir -p "$BASE"/{state,spool,log,run}
    start_munge
    write_slurm_conf
    start_accounting
    /usr/sbin/slurmctld -i
    for n in $NODE_NAMES; do mkdir -p "$BASE/spool/$n"; /usr/sbin/slurmd -N "$n"; done
    local state="" deadline=$(( SECONDS + 60 ))
    while [ $SECONDS -lt $deadline ]; do
        sleep 0.3
        for d in slurmctld $(printf 'slurmd-%s ' $NODE_NAMES); do
            if [ -s "$BASE/run/$d.pid" ] && ! alive "$(cat "$BASE/run/$d.pid")"; then
                tail -n 20 "$BASE/log/$d.log" >&2; die "$d died (log: $BASE/log/$d.log)"
            fi
        done
        state=$(timeout 5 sinfo -h -N -o %T 2>/dev/null | sort -u | tr '\n' ' ' || true)
        [ "$state" = "idle " ] && break
    done
    [ "$state" = "idle " ] || die "nodes are '$state' after 60 s, not idle (logs: $BASE/log)"
    say "up in $(( SECONDS - t0 )) s: node(s) $NODE_NAMES with $CPUS CPUs each, partitions debug (default) and high, accounting $ACCT"
}

cmd_down() {
    if answers; then scancel --user="$(id -un)" >/dev/null 2>&1 || true; sleep 1; fi
    for f in "$BASE"/run/slurmd*.pid; do stop_pidfile "$f"; done
    for d in slurmctld slurmdbd; do stop_pidfile "$BASE/run/$d.pid"; done
    stop_pidfile "$BASE/mysql/mariadb.pid"  # written by user mysql, so inside its own folder
    stop_pidfile "$BASE/run/munged.pid"
    if [ -e /usr/local/bin/sacct.shg-shim ]; then rm -f /usr/local/bin/sacct /usr/local/bin/sacct.shg-shim; fi
    say "down"
}

cmd_status() {
    if answers; then
        sinfo; squeue -t all 2>/dev/null | head -n 20; return 0
    fi
    echo "no Slurm cluster answers (start one with: $0 up)"; return 1
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
