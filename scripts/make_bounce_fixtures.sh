#!/usr/bin/env bash
# Regenerate tests/data/mta_bounces/: real bounce messages from real MTAs run privately here.
#
#   sudo scripts/make_bounce_fixtures.sh [postfix exim opensmtpd sendmail sendmail-mime dma]
#   (default: all)
#
# Each MTA runs from a temp dir on a loopback port with a throwaway config and its own spool,
# relays to scripts/bounce_fixture_server.py (aiosmtpd, refusing per recipient as scripted in
# BEHAVIOURS there) and sends its bounces back to sender@sender.test on the same server, which
# appends them to an mbox; bounce_fixture_tools.py then writes one .eml per case.
#
# Nothing system-wide is changed: the system Postfix is neither reconfigured nor restarted
# (a private instance runs with `postfix -c`), and Exim/OpenSMTPD/Sendmail, which conflict with
# the postfix package, are never installed: `apt-get download` + `dpkg -x` into the temp dir.
# The script re-executes itself in a private mount namespace, so the users those daemons need
# are added to a bind-mounted copy of /etc/passwd that nothing outside sees.
# Set DEB_CACHE=DIR to reuse downloaded .debs between runs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
OUT=${OUT:-$REPO/tests/data/mta_bounces}
TOOLS=(python3 "$HERE/bounce_fixture_tools.py")

if [[ $(id -u) -ne 0 ]]; then
    echo "run as root: the MTAs need to drop privileges to their own users" >&2
    exit 2
fi
if [[ -z ${BOUNCE_FIXTURES_NS:-} ]]; then
    exec unshare --mount --propagation private env BOUNCE_FIXTURES_NS=1 "$0" "$@"
fi

WORK=$(mktemp -d /tmp/mailctl-bounce-fixtures.XXXXXX)
chmod 755 "$WORK"
PIDS=()

cleanup() {
    local status=$?
    set +e
    [[ -f $WORK/postfix/etc/main.cf ]] && postfix -c "$WORK/postfix/etc" stop >/dev/null 2>&1
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pidfile in "$WORK"/*/pid "$WORK"/*/*.pid; do
        [[ -f $pidfile ]] && kill "$(head -1 "$pidfile" 2>/dev/null)" 2>/dev/null
    done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
    # The namespace's bind mounts go away with it; unmount anyway so rm can remove the dir.
    grep -o " $WORK[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l
    [[ -n ${KEEP_WORK:-} ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '== %s\n' "$*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Start the refusing destination + bounce sink for one MTA, listening on $SINK.
start_server() {
    local name=$1
    SINK=$(free_port)
    python3 "$HERE/bounce_fixture_server.py" --port "$SINK" --mbox "$WORK/$name.mbox" \
        >"$WORK/$name-server.log" 2>&1 &
    PIDS+=($!)
    wait_port "$SINK"
}

wait_port() {
    local port=$1 i
    for ((i = 0; i < 100; i++)); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 1)" \
            2>/dev/null && return 0
        sleep 0.2
    done
    echo "nothing listens on 127.0.0.1:$port after 20s" >&2
    return 1
}

# Fetch and unpack Debian packages into $WORK/root (never installed).
unpack() {
    local cache=${DEB_CACHE:-$WORK/debs}
    mkdir -p "$cache" "$WORK/root"
    local pkg
    for pkg in "$@"; do
        if ! compgen -G "$cache/${pkg}_*.deb" >/dev/null; then
            (cd "$cache" && timeout 300 apt-get download -q "$pkg" >/dev/null 2>&1) ||
                { echo "apt-get download $pkg failed" >&2; return 1; }
        fi
        dpkg -x "$(compgen -G "$cache/${pkg}_*.deb" | head -1)" "$WORK/root"
    done
}

deb_version() { dpkg-deb -f "$(compgen -G "${DEB_CACHE:-$WORK/debs}/${1}_*.deb" | head -1)" Version; }

# Users the unpacked daemons drop privileges to, visible only inside this mount namespace.
add_users() {
    if [[ ! -f $WORK/passwd ]]; then
        cp /etc/passwd "$WORK/passwd"
        cp /etc/group "$WORK/group"
        mount --bind "$WORK/passwd" /etc/passwd
        mount --bind "$WORK/group" /etc/group
    fi
    local user uid
    for user in "$@"; do
        getent passwd "$user" >/dev/null && continue
        uid=$((64000 + $(wc -l <"$WORK/passwd") % 500))
        echo "$user:x:$uid:$uid::/nonexistent:/usr/sbin/nologin" >>"$WORK/passwd"
        echo "$user:x:$uid:" >>"$WORK/group"
    done
}

# The bounces each MTA must produce: one per message sent by send_cases, plus the delay
# warning for the "expired" message.
REMOTE_CASES=(userunknown-rcpt userunknown-data userunknown-mixed mailboxfull norelaying
    authfailure expired delayed)

# The messages every MTA is asked to deliver: case, then recipients (dest.test and
# norelay.test relay to the fixture server; $2 is the MTA's own local domain, or empty).
# LABELS in bounce_fixture_tools.py says what each bounce must report: keep the two in step.
send_cases() {
    local port=$1 local_domain=$2
    "${TOOLS[@]}" send --port "$port" --case userunknown-rcpt unknown-rcpt@dest.test
    "${TOOLS[@]}" send --port "$port" --case userunknown-data unknown-data@dest.test
    "${TOOLS[@]}" send --port "$port" --case userunknown-mixed \
        ok@dest.test unknown-rcpt-a@dest.test unknown-rcpt-b@dest.test
    "${TOOLS[@]}" send --port "$port" --case mailboxfull full@dest.test
    "${TOOLS[@]}" send --port "$port" --case norelaying someone@norelay.test
    "${TOOLS[@]}" send --port "$port" --case authfailure dmarc@dest.test
    "${TOOLS[@]}" send --port "$port" --case expired later@dest.test
    if [[ -n $local_domain ]]; then
        "${TOOLS[@]}" send --port "$port" --case local-userunknown "nosuchuser@$local_domain"
    fi
}

# ---------------------------------------------------------------------------------------------
# Postfix: a private instance (own config, queue and data directories), never the system one.

run_postfix() {
    local dir=$WORK/postfix port sink
    start_server postfix
    sink=$SINK
    port=$(free_port)
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data" "$dir/vmail/full"
    # A mailbox already at its quota: virtual(8) bounces with 5.2.2 on the next delivery.
    head -c 20000 /dev/zero | tr '\0' 'x' >"$dir/vmail/full/mbox"
    chown -R nobody:nogroup "$dir/vmail"
    chown postfix "$dir/data"
    cat >"$dir/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
myhostname = mx.postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination = postfix.test
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_dns_support_level = disabled
smtp_bind_address = 127.0.0.1
alias_maps =
alias_database =
# Accept unknown local users over SMTP so that local(8) bounces them instead.
local_recipient_maps =
mail_spool_directory = $dir/spool
transport_maps = inline:{ dest.test=smtp:[127.0.0.1]:$sink, norelay.test=smtp:[127.0.0.1]:$sink, sender.test=smtp:[127.0.0.1]:$sink }
virtual_mailbox_domains = quota.postfix.test
virtual_mailbox_base = $dir/vmail
virtual_mailbox_maps = inline:{ full@quota.postfix.test=full/mbox }
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_mailbox_limit = 20000
message_size_limit = 20000
# Seconds instead of days, so that a 4xx expires and warns within the run.
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
delay_warning_time = 5s
maximal_queue_lifetime = 25s
bounce_queue_lifetime = 25s
smtp_connect_timeout = 10s
EOF
    cat >"$dir/etc/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    postfix -c "$dir/etc" check
    postfix -c "$dir/etc" start
    wait_port "$port"
    send_cases "$port" postfix.test
    "${TOOLS[@]}" send --port "$port" --case local-mailboxfull full@quota.postfix.test
    # The expiry comes after 25 s.
    "${TOOLS[@]}" wait --mbox "$WORK/postfix.mbox" --timeout 120 \
        "${REMOTE_CASES[@]}" local-userunknown local-mailboxfull ||
        { tail -30 "$dir/maillog" >&2; return 1; }
    postfix -c "$dir/etc" stop
    "${TOOLS[@]}" split --mbox "$WORK/postfix.mbox" --out "$OUT/postfix"
    echo "postfix $(postconf -c "$dir/etc" -h mail_version)" >>"$WORK/versions"
}

# ---------------------------------------------------------------------------------------------
# Exim 4 (Debian exim4-daemon-light), unpacked, with a throwaway config given by -C.

run_exim() {
    local dir=$WORK/exim port sink
    unpack exim4-base exim4-daemon-light libidn12
    add_users Debian-exim
    start_server exim
    sink=$SINK
    port=$(free_port)
    mkdir -p "$dir/spool" "$dir/log" "$dir/mail"
    head -c 20000 /dev/zero | tr '\0' 'x' >"$dir/mail/full"
    chown -R Debian-exim "$dir/spool" "$dir/log"
    chown -R Debian-exim "$dir/mail"
    # Exim drops root for a -C config that is not in /etc/exim4/trusted_configs, so everything
    # runs as Debian-exim; without the setuid bit its re-executions keep LD_LIBRARY_PATH.
    chmod u-s "$WORK/root/usr/sbin/exim4"
    cat >"$dir/exim.conf" <<EOF
primary_hostname = mx.exim.test
qualify_domain = exim.test
domainlist local_domains = exim.test : quota.exim.test
spool_directory = $dir/spool
log_file_path = $dir/log/%slog
pid_file_path = $dir/exim.pid
daemon_smtp_ports = $port
local_interfaces = 127.0.0.1
host_lookup =
rfc1413_hosts =
# Exim re-executes itself with a cleared environment: a wrapper keeps the unpacked libidn12.
exim_path = $dir/exim4
keep_environment =
acl_smtp_rcpt = accept_all
# Seconds instead of hours, so that a 4xx warns and expires within the run.
delay_warning = 6s:1h
delay_warning_condition = true
ignore_bounce_errors_after = 0s

begin acl
# Accept every recipient, so that unknown local users are bounced, not refused at RCPT.
accept_all:
  accept

begin routers
to_fixture_server:
  driver = manualroute
  domains = dest.test : norelay.test : sender.test
  route_list = * 127.0.0.1
  self = send
  transport = fixture_smtp
over_quota:
  driver = accept
  domains = quota.exim.test
  local_parts = full
  transport = quota_mailbox
local_user:
  driver = accept
  domains = exim.test
  check_local_user
  transport = quota_mailbox

begin transports
fixture_smtp:
  driver = smtp
  port = $sink
  hosts_override
  allow_localhost
quota_mailbox:
  driver = appendfile
  file = $dir/mail/full
  user = Debian-exim
  quota = 10K

begin retry
# No retry times: a full mailbox bounces at once; everything else gives up after 20 s.
* quota
* * F,20s,4s
EOF
    printf '#!/bin/sh\nexport LD_LIBRARY_PATH=%s\nexec %s "$@"\n' \
        "$WORK/root/usr/lib/x86_64-linux-gnu" "$WORK/root/usr/sbin/exim4" >"$dir/exim4"
    chmod 755 "$dir/exim4"
    local exim=("$dir/exim4" -C "$dir/exim.conf")
    "${exim[@]}" -bV >"$WORK/exim-version"
    "${exim[@]}" -bd -q4s
    wait_port "$port"
    send_cases "$port" exim.test
    "${TOOLS[@]}" send --port "$port" --case local-mailboxfull full@quota.exim.test
    # The expiry comes after 20 s.
    "${TOOLS[@]}" wait --mbox "$WORK/exim.mbox" --timeout 120 \
        "${REMOTE_CASES[@]}" local-userunknown local-mailboxfull ||
        { tail -n 30 "$dir"/log/* >&2; return 1; }
    kill "$(cat "$dir/exim.pid")"
    "${TOOLS[@]}" split --mbox "$WORK/exim.mbox" --out "$OUT/exim"
    echo "exim $(deb_version exim4-daemon-light) ($(head -1 "$WORK/exim-version"))" >>"$WORK/versions"
}

# ---------------------------------------------------------------------------------------------
# OpenSMTPD (Debian opensmtpd), unpacked. Its spool, chroot and control socket paths are
# compiled in (/var/spool/smtpd, /var/lib/opensmtpd/empty, /run/smtpd.sock), so it runs in a
# nested mount + UTS namespace where private dirs are mounted over those parents and the host
# name is its own.

run_opensmtpd() {
    local dir=$WORK/opensmtpd port sink pid
    unpack opensmtpd
    add_users opensmtpd opensmtpq
    start_server opensmtpd
    sink=$SINK
    port=$(free_port)
    mkdir -p "$dir/spool" "$dir/varlib/opensmtpd/empty" "$dir/run"
    cat >"$dir/smtpd.conf" <<EOF
# Seconds instead of days, so that a 4xx warns and expires within the run.
queue ttl 25s
bounce warn-interval 5s
listen on 127.0.0.1 port $port hostname mx.opensmtpd.test
action "fixture" relay host smtp://127.0.0.1:$sink helo mx.opensmtpd.test
match from any for domain { dest.test, norelay.test, sender.test } action "fixture"
EOF
    unshare --mount --uts --propagation private sh -c '
        hostname mx.opensmtpd.test
        mount --bind "$1/spool" /var/spool
        mount --bind "$1/varlib" /var/lib
        mount --bind "$1/run" /run
        exec "$2" -d -f "$1/smtpd.conf"' sh "$dir" "$WORK/root/usr/sbin/smtpd" \
        >"$dir/smtpd.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" || { cat "$dir/smtpd.log" >&2; return 1; }
    send_cases "$port" ""
    # The first retry of the 4xx comes late; ask for it, so that the delay warning is sent.
    local i
    for ((i = 0; i < 12; i++)); do
        sleep 5
        nsenter --mount --uts --target "$pid" "$WORK/root/usr/sbin/smtpctl" schedule all \
            >/dev/null 2>&1 || true
    done &
    PIDS+=($!)
    "${TOOLS[@]}" wait --mbox "$WORK/opensmtpd.mbox" --timeout 120 "${REMOTE_CASES[@]}" ||
        { tail -n 30 "$dir/smtpd.log" >&2; return 1; }
    kill "$pid"
    "${TOOLS[@]}" split --mbox "$WORK/opensmtpd.mbox" --out "$OUT/opensmtpd"
    echo "opensmtpd $(deb_version opensmtpd)" >>"$WORK/versions"
}

# ---------------------------------------------------------------------------------------------
# Sendmail 8 (Debian sendmail-bin), unpacked, config built with the unpacked sendmail-cf and m4.
# Two instances: "sendmail" with SendMimeErrors=False, the plain-text "Returned mail: see
# transcript" kind that older and many in-house setups still send, with no DSN part to help;
# "sendmail-mime" with Debian's default, a multipart/report. Each runs in a nested UTS + mount
# namespace so that its own host name resolves without DNS.

sendmail_instance() {
    local name=$1 mime_errors=$2 dir=$WORK/$1 port sink pid
    unpack sendmail-bin sendmail-cf m4 liblockfile1 libwrap0
    # Without the setgid bit the unpacked binary keeps LD_LIBRARY_PATH (libwrap0, liblockfile1).
    chmod g-s "$WORK/root/usr/libexec/sendmail/sendmail"
    start_server "$name"
    sink=$SINK
    port=$(free_port)
    mkdir -p "$dir/queue"
    chmod 700 "$dir/queue"
    touch "$dir/statistics"
    # Without an alias database a local recipient is deferred, not found unknown.
    printf 'postmaster: root\nMAILER-DAEMON: postmaster\n' >"$dir/aliases"
    printf 'hosts files\n' >"$dir/service.switch"
    { cat /etc/hosts; echo "127.0.0.1 mx.sendmail.test mx"; } >"$dir/hosts"
    cat >"$dir/sendmail.mc" <<EOF
divert(-1)dnl
divert(0)dnl
include(\`$WORK/root/usr/share/sendmail/cf/m4/cf.m4')dnl
VERSIONID(\`mailctl bounce fixtures')dnl
OSTYPE(\`linux')dnl
define(\`confDOMAIN_NAME', \`mx.sendmail.test')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
define(\`QUEUE_DIR', \`$dir/queue')dnl
define(\`STATUS_FILE', \`$dir/statistics')dnl
define(\`ALIAS_FILE', \`$dir/aliases')dnl
dnl The temp dir sits under the world-writable /tmp.
define(\`confDONT_BLAME_SENDMAIL', \`MapInUnsafeDirPath')dnl
define(\`confPID_FILE', \`$dir/sendmail.pid')dnl
define(\`confSERVICE_SWITCH_FILE', \`$dir/service.switch')dnl
define(\`confHOSTS_FILE', \`$dir/hosts')dnl
dnl Seconds instead of days, so that a 4xx warns and expires within the run.
define(\`confTO_QUEUERETURN', \`25s')dnl
define(\`confTO_QUEUEWARN', \`6s')dnl
define(\`confMIN_QUEUE_AGE', \`0s')dnl
define(\`confMIME_FORMAT_ERRORS', \`$mime_errors')dnl
define(\`SMART_HOST', \`esmtp:[127.0.0.1]')dnl
define(\`ESMTP_MAILER_ARGS', \`TCP \$h $sink')dnl
define(\`LOCAL_MAILER_PATH', \`$dir/mail.local')dnl
define(\`LOCAL_MAILER_ARGS', \`mail.local -d \$u')dnl
FEATURE(\`nocanonify')dnl
FEATURE(\`accept_unresolvable_domains')dnl
LOCAL_DOMAIN(\`sendmail.test')dnl
DAEMON_OPTIONS(\`Port=$port, Addr=127.0.0.1, Name=MTA')dnl
MAILER(\`local')dnl
MAILER(\`smtp')dnl
EOF
    # Sendmail clears the environment for its mailers: a wrapper keeps the unpacked libraries.
    printf '#!/bin/sh\nexport LD_LIBRARY_PATH=%s\nexec %s "$@"\n' \
        "$WORK/root/usr/lib/x86_64-linux-gnu" "$WORK/root/usr/libexec/sendmail/mail.local" \
        >"$dir/mail.local"
    chmod 755 "$dir/mail.local"
    "$WORK/root/usr/bin/m4" "$dir/sendmail.mc" >"$dir/sendmail.cf"
    unshare --mount --uts --propagation private sh -c '
        hostname mx.sendmail.test
        mount --bind "$1/hosts" /etc/hosts
        export LD_LIBRARY_PATH=$2/usr/lib/x86_64-linux-gnu
        "$2/usr/libexec/sendmail/sendmail" -C "$1/sendmail.cf" -bi
        exec "$2/usr/libexec/sendmail/sendmail" -C "$1/sendmail.cf" -bD -q4s -L sm-fixture' \
        sh "$dir" "$WORK/root" >"$dir/sendmail.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port" || { cat "$dir/sendmail.log" >&2; return 1; }
    send_cases "$port" ""
    # Sendmail refuses an unknown local user at RCPT; submitted on the command line with
    # -oem (mail errors back), it bounces.
    "${TOOLS[@]}" message --case local-userunknown nosuchuser@sendmail.test |
        nsenter --mount --uts --target "$pid" env \
            LD_LIBRARY_PATH="$WORK/root/usr/lib/x86_64-linux-gnu" \
            "$WORK/root/usr/libexec/sendmail/sendmail" -C "$dir/sendmail.cf" -odq -oem \
            -f sender@sender.test nosuchuser@sendmail.test || true # exits 67 (EX_NOUSER) too
    "${TOOLS[@]}" wait --mbox "$WORK/$name.mbox" --timeout 120 \
        "${REMOTE_CASES[@]}" local-userunknown || { cat "$dir/sendmail.log" >&2; return 1; }
    kill "$pid"
    "${TOOLS[@]}" split --mbox "$WORK/$name.mbox" --out "$OUT/$name"
    echo "$name $(deb_version sendmail-bin)" >>"$WORK/versions"
}

run_sendmail() { sendmail_instance sendmail False; }

# Debian's default: the same bounces as a multipart/report with a DSN part.
run_sendmail_mime() { sendmail_instance sendmail-mime True; }

# ---------------------------------------------------------------------------------------------
# dma, the DragonFly Mail Agent (Debian dma), unpacked: a small BSD mailer with no SMTP server
# and no config flag. Its plain-text bounces ("There was an error delivering your mail to
# <...>", "did not like our final DATA", "Message headers follow.") carry no DSN part. It runs
# in a nested mount + UTS + PID namespace: /etc/dma/dma.conf comes from an overlay on /etc,
# its spool is private, and killing the namespace's init ends any delivery still retrying.
# Only the cases refused outright: dma bounces each recipient separately (no mixed case) and
# its retry times are compiled in (days), so no expiry; it does no local delivery check.

run_dma() {
    local dir=$WORK/dma pid case
    unpack dma
    start_server dma
    mkdir -p "$dir/etc-up/dma" "$dir/etc-work" "$dir/spool/dma" "$dir/msgs"
    chgrp mail "$dir/spool/dma"
    chmod 2770 "$dir/spool/dma"
    printf 'SMARTHOST 127.0.0.1\nPORT %s\nMAILNAME mx.dma.test\n' "$SINK" \
        >"$dir/etc-up/dma/dma.conf"
    local -A rcpt=(
        [userunknown-rcpt]=unknown-rcpt@dest.test [userunknown-data]=unknown-data@dest.test
        [mailboxfull]=full@dest.test [norelaying]=someone@norelay.test
        [authfailure]=dmarc@dest.test
    )
    for case in "${!rcpt[@]}"; do
        "${TOOLS[@]}" message --case "$case" "${rcpt[$case]}" >"$dir/msgs/$case.eml"
        echo "${rcpt[$case]}" >"$dir/msgs/$case.rcpt"
    done
    unshare --mount --uts --pid --fork --kill-child --propagation private sh -c '
        hostname mx.dma.test
        mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/etc-up,workdir=$1/etc-work" /etc
        mount --bind "$1/spool" /var/spool
        for msg in "$1"/msgs/*.eml; do
            "$2" -f sender@sender.test "$(cat "${msg%.eml}.rcpt")" <"$msg"
        done
        sleep 300' sh "$dir" "$WORK/root/usr/sbin/dma" >"$dir/dma.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    "${TOOLS[@]}" wait --mbox "$WORK/dma.mbox" --timeout 60 "${!rcpt[@]}" ||
        { cat "$dir/dma.log" >&2; return 1; }
    # unshare --fork ignores SIGTERM; on SIGKILL, --kill-child takes the namespace down with it.
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    "${TOOLS[@]}" split --mbox "$WORK/dma.mbox" --out "$OUT/dma"
    echo "dma $(deb_version dma)" >>"$WORK/versions"
}

main() {
    local mtas=("$@")
    [[ ${#mtas[@]} -eq 0 ]] && mtas=(postfix exim opensmtpd sendmail sendmail-mime dma)
    local mta
    for mta in "${mtas[@]}"; do
        log "$mta"
        rm -rf "${OUT:?}/$mta"
        "run_${mta//-/_}"
    done
    "${TOOLS[@]}" labels --root "$OUT"
    cat "$WORK/versions"
}

main "$@"
