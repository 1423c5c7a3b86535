#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for tests/test_slurm.py and for trying
# profiles/slurm by hand: Debian's slurm-wlm, slurmdbd and munge packages, a MariaDB server that
# only slurmdbd uses (job accounting, so that `sacct` answers), one controller and one compute
# node on localhost, one GPU-free partition sized from this machine (`slurmd -C`).
#
#   bash tests/slurm/start.sh          # install (the first time), configure and start; idempotent
#   bash tests/slurm/start.sh stop     # stop the daemons this script started
#   bash tests/slurm/start.sh status   # what runs, and sinfo
#
# Needs root (or password-free sudo, which it then uses): it installs packages (apt-get), writes
# /etc/slurm/slurm.conf and slurmdbd.conf and starts daemons. It refuses to overwrite a Slurm
# configuration it did not write. Its own state
# (MariaDB data, slurmctld state, spool, logs) lives under /var/lib/mtgan-slurm, its pid files and
# sockets under /run/mtgan-slurm; `stop` ends only the processes named in those pid files.
# The cluster: ClusterName mtgan-local, partition `cpu` (default), account `mtgan` (root and
# $SUDO_USER are its users; associations are enforced, as on most real clusters).
# A start that finds the daemons dead (a killed session, a reboot) cancels the jobs they left
# listed as running with no process left (cancel_ghost_jobs), which would hold the node until
# their time limit.
set -euo pipefail

ACTION=${1:-start}
CLUSTER=mtgan-local
PARTITION=cpu
ACCOUNT=mtgan
STATE=/var/lib/mtgan-slurm
RUN=/run/mtgan-slurm
LOGS=$STATE/log
DB_PORT=3307          # not 3306: this MariaDB is slurmdbd's own and leaves any system one alone
DB_SOCKET=$RUN/mysql/mysqld.sock
DB_PASS=mtgan-slurm-local   # a database that listens on 127.0.0.1 only, for slurmdbd
SLURM_CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# Written by tests/slurm/start.sh of the mtgan-sod repository (a local test cluster)."
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

# --- processes this script started: pid files under $RUN -----------------------------------
pid_alive() {  # pid_alive NAME: the pid in $RUN/NAME.pid runs the program it was started as
    local file=$RUN/$1.pid pid
    [ -s "$file" ] || return 1
    pid=$(head -n1 "$file")
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$(cat "$RUN/$1.exe" 2>/dev/null)" ]
}

remember() {  # remember NAME PIDFILE BINARY: copy a daemon's own pid file into $RUN/NAME.pid
    local i
    for i in $(seq 100); do
        [ -s "$2" ] && break
        sleep 0.1
    done
    [ -s "$2" ] || die "$1 did not write $2; see $LOGS/"
    if [ "$2" != "$RUN/$1.pid" ]; then head -n1 "$2" >"$RUN/$1.pid"; fi
    readlink -f "$3" >"$RUN/$1.exe"
}

stop_one() {  # stop_one NAME: TERM the process of $RUN/NAME.pid and wait (KILL after 30 s)
    local pid i
    if pid_alive "$1"; then
        pid=$(head -n1 "$RUN/$1.pid")
        say "stopping $1 (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 300); do
            [ -d "/proc/$pid" ] || break
            sleep 0.1
        done
        if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; fi
    fi
    rm -f "$RUN/$1.pid" "$RUN/$1.exe"
}

stop_all() {
    stop_one slurmd
    stop_one slurmctld
    stop_one slurmdbd
    stop_one mariadb
    stop_one munged
}

status() {
    local name
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        if pid_alive "$name"; then echo "$name: running (pid $(head -n1 "$RUN/$name.pid"))"; else echo "$name: not started by this script"; fi
    done
    sinfo 2>&1 || true
}

# --- installation ---------------------------------------------------------------------------
install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- configuration --------------------------------------------------------------------------
node_name() { hostname -s; }

slurm_conf() {
    # The node as slurmd sees this machine (CPUs, sockets, cores, threads); memory: 90% of what it
    # detects, so that a little drift does not drain the node ("Low RealMemory").
    local hw cpus boards sockets cores threads mem
    hw=$(slurmd -C | head -n1)
    field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
    cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
    cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
    [ -n "$cpus" ] && [ -n "$mem" ] || die "cannot read this machine's CPUs and memory from 'slurmd -C': $hw"
    mem=$((mem * 9 / 10))
    cat <<EOF
$MARK
# Stop it with: bash tests/slurm/start.sh stop
ClusterName=$CLUSTER
SlurmctldHost=$(node_name)(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurm/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (this may run in a container): processes are tracked through their parents, and
# tasks are bound to their CPUs with sched_setaffinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
ReturnToService=2
# Finished jobs stay in squeue for 5 minutes (Slurm's default, said here because the SLURM plugin
# reads job states from squeue with profiles/slurm, which needs at least 2 minutes).
MinJobAge=300
# Reject at submission a job that no node of the partition can run (e.g. more CPUs than a node
# has) instead of leaving it pending for ever (reason PartitionConfig), as many real clusters do.
EnforcePartLimits=ALL
KillWait=5
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# Job accounting through slurmdbd (MariaDB), so that sacct lists every job; associations are
# enforced, so a job needs a valid account, as on most real clusters.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
JobCompType=jobcomp/none
NodeName=$(node_name) NodeAddr=127.0.0.1 CPUs=$cpus Boards=$boards SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

dbd_conf() {
    cat <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurm/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

check_ours() {  # refuse to overwrite a Slurm configuration that this script did not write
    local f
    for f in "$SLURM_CONF" "$DBD_CONF"; do
        if [ -e "$f" ] && ! grep -qF "$MARK" "$f"; then
            die "$f exists and was not written by this script; not touching it (move it away to use the local test cluster)"
        fi
    done
}

running_and_current() {  # every daemon up with the configuration we would write, node usable
    local name
    for name in munged mariadb slurmdbd slurmctld slurmd; do pid_alive "$name" || return 1; done
    [ "$(cat "$SLURM_CONF")" = "$(slurm_conf)" ] && [ "$(cat "$DBD_CONF")" = "$(dbd_conf)" ] || return 1
    sinfo -h -n "$(node_name)" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)$'
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2 i
    shift 2
    for i in $(seq $((seconds * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "$what did not come up within $seconds s; logs: $LOGS/"
}

# --- daemons ---------------------------------------------------------------------------------
start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    if pid_alive munged || (munge -n | unmunge) >/dev/null 2>&1; then
        return 0  # ours, or a munged that was already running (e.g. started by the package)
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    rm -f /run/munge/munged.pid
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    remember munged /run/munge/munged.pid /usr/sbin/munged
    wait_for 20 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
    pid_alive mariadb && return 0
    install -d -o mysql -g mysql -m 0755 "$RUN/mysql"
    if [ ! -d "$STATE/mysql/mysql" ]; then
        say "creating slurmdbd's MariaDB data folder $STATE/mysql"
        install -d -o mysql -g mysql -m 0700 "$STATE/mysql"
        mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/mysql" --skip-test-db \
            --auth-root-authentication-method=socket >"$LOGS/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed; see $LOGS/mariadb-install.log"
    fi
    say "starting MariaDB for slurmdbd (127.0.0.1:$DB_PORT)"
    rm -f "$RUN/mysql/mysqld.pid"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" \
        --socket="$DB_SOCKET" --pid-file="$RUN/mysql/mysqld.pid" --bind-address=127.0.0.1 --port=$DB_PORT \
        --log-error="$LOGS/mariadb.log" --innodb-buffer-pool-size=256M --innodb-lock-wait-timeout=900 \
        --innodb-log-file-size=64M </dev/null >/dev/null 2>&1 &
    remember mariadb "$RUN/mysql/mysqld.pid" /usr/sbin/mariadbd
    wait_for 60 MariaDB mariadb-admin --no-defaults --socket="$DB_SOCKET" ping
    mariadb --no-defaults --socket="$DB_SOCKET" -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    pid_alive slurmdbd && return 0
    say "starting slurmdbd"
    rm -f "$RUN/slurm/slurmdbd.pid"
    slurmdbd
    remember slurmdbd "$RUN/slurm/slurmdbd.pid" /usr/sbin/slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
}

accounts() {  # the cluster, the account and its users in the accounting database (idempotent)
    local user
    if [ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster)" ]; then
        sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null
    fi
    if [ -z "$(sacctmgr -n -P list account "$ACCOUNT" format=account)" ]; then
        sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" description="mtgan-sod tests" organization=mtgan >/dev/null
    fi
    for user in root ${SUDO_USER:-}; do
        if [ -z "$(sacctmgr -n -P list association cluster="$CLUSTER" account="$ACCOUNT" user="$user" format=user)" ]; then
            sacctmgr -i -Q add user "$user" account="$ACCOUNT" defaultaccount="$ACCOUNT" cluster="$CLUSTER" >/dev/null
        fi
    done
}

start_slurmctld() {
    pid_alive slurmctld && return 0
    say "starting slurmctld"
    rm -f "$RUN/slurm/slurmctld.pid"
    slurmctld
    remember slurmctld "$RUN/slurm/slurmctld.pid" /usr/sbin/slurmctld
    wait_for 60 slurmctld scontrol ping
}

start_slurmd() {
    pid_alive slurmd && return 0
    say "starting slurmd"
    rm -f "$RUN/slurmd.pid"
    slurmd
    remember slurmd "$RUN/slurmd.pid" /usr/sbin/slurmd
}

node_ready() { sinfo -h -n "$(node_name)" -o %T | grep -qE '^(idle|mixed|allocated|completing)$'; }

cancel_ghost_jobs() {  # cancel_ghost_jobs SINCE: running jobs from before SINCE (epoch s) with no process here
    # Daemons that died with their jobs (a killed CI session, a reboot) leave those jobs in
    # slurmctld's saved state: the new slurmctld counts them as running until their time limit
    # (30 minutes in profiles/slurm/test-cluster) and the node as allocated, so every new job waits.
    # A job that started before this start and has no slurmstepd on this (the only) node is one of
    # them. Jobs whose processes survived the restart, and pending jobs, are left alone.
    local id start ghosts=() i
    while read -r id start; do
        [ -n "$id" ] && [ "$start" != N/A ] || continue
        [ "$(date -d "$start" +%s)" -lt "$1" ] || continue
        pgrep -f "^slurmstepd: \[$id\." >/dev/null && continue
        ghosts+=("$id")
    done < <(squeue -h -t RUNNING,COMPLETING -o '%i %S')
    [ ${#ghosts[@]} -eq 0 ] && return 0
    say "cancelling ${#ghosts[@]} job(s) listed as running whose processes ended with the earlier slurmd: ${ghosts[*]}"
    scancel "${ghosts[@]}"
    for i in $(seq 150); do
        [ -z "$(squeue -h -j "$(IFS=,; echo "${ghosts[*]}")" -o %i 2>/dev/null)" ] && return 0
        sleep 0.2
    done
    die "jobs ${ghosts[*]} are still listed 30 s after scancel; see $LOGS/slurmctld.log"
}

start() {
    [ "$(id -u)" -eq 0 ] || die "needs root (it installs packages, writes /etc/slurm and starts daemons)"
    install_packages
    mkdir -p "$RUN" "$STATE"
    install -d -o slurm -g slurm -m 0755 "$LOGS" "$RUN/slurm" "$STATE/slurmctld"
    install -d -m 0755 "$STATE/slurmd"
    check_ours
    if [ -e "$SLURM_CONF" ] && running_and_current; then
        say "already running: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %T')"
        return 0
    fi
    # (Re)start the Slurm daemons with the configuration below; munge and MariaDB stay if they run.
    stop_one slurmd
    stop_one slurmctld
    stop_one slurmdbd
    slurm_conf >"$SLURM_CONF.new" && mv "$SLURM_CONF.new" "$SLURM_CONF"
    chmod 0644 "$SLURM_CONF"
    (umask 077; dbd_conf >"$DBD_CONF.new") && mv "$DBD_CONF.new" "$DBD_CONF"
    chown slurm:slurm "$DBD_CONF"
    chmod 0600 "$DBD_CONF"
    start_munge
    start_mariadb
    start_slurmdbd
    accounts
    local since
    since=$(date +%s)
    start_slurmctld
    start_slurmd
    local i
    for i in $(seq 150); do
        node_ready && break
        # a node left down or drained by an earlier run (e.g. killed daemons) is put back
        if sinfo -h -n "$(node_name)" -o %T | grep -qE 'down|drain'; then
            scontrol update nodename="$(node_name)" state=resume >/dev/null 2>&1 || true
        fi
        sleep 0.2
    done
    node_ready || die "node $(node_name) is not usable: $(sinfo -h -N -o '%N %T %E'); logs: $LOGS/"
    cancel_ghost_jobs "$since"
    say "running: $(sinfo -h -o '%P %D node(s) %c CPUs %m MB %T'), $(sinfo -V)"
}

if [ "$(id -u)" -ne 0 ] && [ "$ACTION" != status ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    exec sudo -n bash "$0" "$@"  # not root, but allowed to become root without a password
fi

case "$ACTION" in
    start) start ;;
    stop)
        [ "$(id -u)" -eq 0 ] || die "needs root"
        stop_all
        ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
