#!/usr/bin/env bash
# Idempotent host set-up for boshcpi development, tests and the demo on Debian 12.
# Installs the daemons (LXD, Incus, libvirt/QEMU), starts them when they are not running,
# and creates a btrfs pool and a NAT-less bridge in LXD and in Incus for the tests.
# Safe to run again: every step checks before it acts.
set -euo pipefail

STATE_DIR=${BOSHCPI_HOST_STATE:-/var/lib/boshcpi-dev}
LOG_DIR=$STATE_DIR/log
mkdir -p "$LOG_DIR"
export DEBIAN_FRONTEND=noninteractive

say() { echo "host-setup: $*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    say "must run as root (it installs Debian packages and starts daemons)"; exit 1
  fi
}

add_backports() {
  if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ ; then return; fi
  local uri
  uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$uri" ]; then
    uri=$(awk '$1=="deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  [ -n "$uri" ] || { say "cannot find the Debian mirror URI to add bookworm-backports"; exit 1; }
  echo "deb $uri bookworm-backports main" > /etc/apt/sources.list.d/boshcpi-backports.list
  say "added bookworm-backports from $uri"
  APT_UPDATED=
}

APT_UPDATED=
apt_update_once() {
  if [ -z "$APT_UPDATED" ]; then apt-get update -qq; APT_UPDATED=1; fi
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep 'install ok installed' >/dev/null; }

install_pkgs() {
  local suite=$1; shift
  local missing=()
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  apt_update_once
  say "installing ${missing[*]}${suite:+ from $suite}"
  if [ -n "$suite" ]; then
    apt-get install -y -qq -o Dpkg::Options::=--force-confdef -t "$suite" "${missing[@]}" >/dev/null
  else
    apt-get install -y -qq -o Dpkg::Options::=--force-confdef "${missing[@]}" >/dev/null
  fi
}

install_all() {
  add_backports
  # backports first: incus pulls QEMU 10, which needs libvirt 11 (HOST.md pitfall)
  install_pkgs bookworm-backports incus libvirt-daemon-system libvirt-clients qemu-system-x86
  install_pkgs "" lxd btrfs-progs busybox-static dosfstools mtools xorriso ruby \
    extlinux syslinux syslinux-common fdisk curl jq hyperfine cpio qemu-utils openssl e2fsprogs \
    debootstrap time git lxcfs runc
  # `bosh create-env` compiles the release's python3 package on this machine (tests/e2e): what a
  # stemcell has is enough (packages/python3/packaging).
  install_pkgs "" build-essential libssl-dev zlib1g-dev
  # What the real director runs on (tests/director.py starts its own instances of each, by PID): its
  # Debian services must not start, so the install runs under a policy that refuses every start.
  no_service_starts install_pkgs "" postgresql nats-server nginx-light
}

no_service_starts() {
  if [ -e /usr/sbin/policy-rc.d ]; then "$@"; return; fi
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  local rc=0
  "$@" || rc=$?
  rm -f /usr/sbin/policy-rc.d
  return $rc
}

# ---- daemons -------------------------------------------------------------------------------
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# lxcfs, as on any LXD host (Debian's lxd recommends it, its unit starts it at boot): containers then
# see their own /proc/uptime, meminfo, cpuinfo, stat, loadavg. Started before the daemons, which
# look for /var/lib/lxcfs when they start a container.
start_lxcfs() {
  if mountpoint -q /var/lib/lxcfs; then return; fi
  # An lxcfs that died (killed with everything else, as at a session's end) leaves its fuse mount
  # behind, and every stat of it fails with "Transport endpoint is not connected": detach it.
  if ! stat /var/lib/lxcfs >/dev/null 2>&1 && grep -q ' /var/lib/lxcfs fuse.lxcfs ' /proc/mounts; then
    say "lxcfs: detaching the mount a dead lxcfs left behind"
    umount -l /var/lib/lxcfs
  fi
  say "starting lxcfs"
  mkdir -p /var/lib/lxcfs
  setsid nohup lxcfs /var/lib/lxcfs >"$LOG_DIR/lxcfs.out" 2>&1 < /dev/null &
  echo $! > "$STATE_DIR/lxcfs.pid"
  for _ in $(seq 50); do mountpoint -q /var/lib/lxcfs && return; sleep 0.1; done
  say "lxcfs did not mount /var/lib/lxcfs (see $LOG_DIR/lxcfs.out)"; exit 1
}

# A daemon whose cluster.https_address is its own bridge's address cannot start after a shutdown
# that took the bridge down (a host reboot): it binds that address before it brings its networks
# up, and exits with "bind: cannot assign requested address". So once ensure_https has put it
# there, the bridge and its address are made first; the daemon adopts the existing bridge.
bridge_first() {
  local cli=$1 bridge=$2 cidr=$3
  [ -f "$STATE_DIR/$cli.listens-on-bridge" ] || return 0
  ip -4 addr show dev "$bridge" 2>/dev/null | grep -q " ${cidr%/*}/" && return 0
  say "$cli: bringing up $bridge ($cidr) before the daemon, which listens on it"
  ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
  ip addr add "$cidr" dev "$bridge" 2>/dev/null || true
  ip link set "$bridge" up
}

start_lxd() {
  if [ -S /var/lib/lxd/unix.socket ] && timeout 5 lxd waitready --timeout=3 2>/dev/null; then return; fi
  bridge_first lxc boshcpi-lxdbr0 10.245.10.1/24
  say "starting lxd"
  setsid nohup lxd --group root --logfile "$LOG_DIR/lxd.log" >"$LOG_DIR/lxd.out" 2>&1 < /dev/null &
  echo $! > "$STATE_DIR/lxd.pid"
  lxd waitready --timeout=60
}

start_incus() {
  if [ -S /var/lib/incus/unix.socket ] && timeout 5 incus admin waitready --timeout=3 2>/dev/null; then return; fi
  bridge_first incus boshcpi-incbr0 10.245.20.1/24
  say "starting incusd"
  setsid nohup /usr/libexec/incus/incusd --group root --logfile "$LOG_DIR/incus.log" \
    >"$LOG_DIR/incus.out" 2>&1 < /dev/null &
  echo $! > "$STATE_DIR/incus.pid"
  incus admin waitready --timeout=60
}

# libvirtd listens on the unix socket and, for the tests of a director VM that reaches it over the
# network (TCP with auth_tcp "none", as the Go libvirt CPI expects, and TLS with client certificates),
# on the LXD test bridge's address only: nothing outside this machine's test bridges can reach it.
LIBVIRT_LISTEN=10.245.10.1
LIBVIRT_PKI=$STATE_DIR/libvirt-pki

libvirt_pki() {
  # A CA, libvirtd's certificate for $LIBVIRT_LISTEN and a client certificate, as libvirt's own
  # sanity checks want them (key usages, CA:TRUE only on the CA): generated once.
  local d=$LIBVIRT_PKI
  [ -f "$d/clientcert.pem" ] && return
  mkdir -p "$d"; chmod 0700 "$d"
  local ext; ext=$(mktemp)
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=boshcpi-test-ca" \
    -keyout "$d/cakey.pem" -out "$d/cacert.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:%s,IP:127.0.0.1\n' \
    "$LIBVIRT_LISTEN" > "$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$LIBVIRT_LISTEN" \
    -keyout "$d/serverkey.pem" -out "$d/server.csr" 2>/dev/null
  openssl x509 -req -in "$d/server.csr" -CA "$d/cacert.pem" -CAkey "$d/cakey.pem" -CAcreateserial -days 3650 \
    -extfile "$ext" -out "$d/servercert.pem" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > "$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=boshcpi-test-client" \
    -keyout "$d/clientkey.pem" -out "$d/client.csr" 2>/dev/null
  openssl x509 -req -in "$d/client.csr" -CA "$d/cacert.pem" -CAkey "$d/cakey.pem" -CAcreateserial -days 3650 \
    -extfile "$ext" -out "$d/clientcert.pem" 2>/dev/null
  rm -f "$ext" "$d"/*.csr
}

libvirt_conf() {
  cat > "$STATE_DIR/libvirtd.conf" <<CONF
listen_tls = 1
listen_tcp = 1
listen_addr = "$LIBVIRT_LISTEN"
auth_tcp = "none"
auth_tls = "none"
key_file = "$LIBVIRT_PKI/serverkey.pem"
cert_file = "$LIBVIRT_PKI/servercert.pem"
ca_file = "$LIBVIRT_PKI/cacert.pem"
CONF
}

libvirt_listening() { ss -ltnH "sport = :16509" 2>/dev/null | grep -q "$LIBVIRT_LISTEN:16509"; }

start_libvirt() {
  if ! pid_alive "$STATE_DIR/virtlogd.pid" && ! pgrep -x virtlogd >/dev/null; then
    say "starting virtlogd"
    setsid nohup /usr/sbin/virtlogd >"$LOG_DIR/virtlogd.out" 2>&1 < /dev/null &
    echo $! > "$STATE_DIR/virtlogd.pid"
  fi
  libvirt_pki
  libvirt_conf
  if virsh -c qemu:///system version >/dev/null 2>&1 && ! libvirt_listening && pid_alive "$STATE_DIR/libvirtd.pid"; then
    # Ours, started before it listened on the network: restart it (running domains carry on).
    say "restarting libvirtd to listen on $LIBVIRT_LISTEN"
    kill "$(cat "$STATE_DIR/libvirtd.pid")"
    for _ in $(seq 1 60); do pid_alive "$STATE_DIR/libvirtd.pid" || break; sleep 0.5; done
  fi
  if ! virsh -c qemu:///system version >/dev/null 2>&1; then
    say "starting libvirtd"
    setsid nohup /usr/sbin/libvirtd --listen -f "$STATE_DIR/libvirtd.conf" >"$LOG_DIR/libvirtd.out" 2>&1 < /dev/null &
    echo $! > "$STATE_DIR/libvirtd.pid"
    for _ in $(seq 1 60); do
      virsh -c qemu:///system version >/dev/null 2>&1 && break
      sleep 0.5
    done
    virsh -c qemu:///system version >/dev/null 2>&1 || { say "libvirtd did not come up; see $LOG_DIR/libvirtd.out"; exit 1; }
  fi
  libvirt_listening || say "warning: libvirtd does not listen on $LIBVIRT_LISTEN (not started by make host)"
}

# ---- test resources ------------------------------------------------------------------------
# CLI DAEMON POOL BRIDGE SUBNET
ensure_resources() {
  local cli=$1 pool=$2 bridge=$3 cidr=$4
  if ! $cli storage show "$pool" >/dev/null 2>&1; then
    say "$cli: creating btrfs pool $pool"
    $cli storage create "$pool" btrfs size=12GiB >/dev/null
  fi
  if ! $cli network show "$bridge" >/dev/null 2>&1; then
    say "$cli: creating NAT-less bridge $bridge ($cidr)"
    $cli network create "$bridge" ipv4.address="$cidr" ipv4.nat=false ipv6.address=none >/dev/null
  fi
}

# Volume sizes on btrfs are qgroup limits. Since Linux 6.7 deleting a subvolume whose tree is
# taller than qgroups/drop_subtree_threshold (default 3, e.g. a big image) skips the accounting and
# marks the qgroups inconsistent, and the limits stop being enforced until a rescan. Keep the test
# pools exact: account every drop, and rescan where a drop already left them inconsistent.
ensure_btrfs_quota() {
  local dir=$1 uuid sys
  [ -d "$dir" ] || return 0
  uuid=$(btrfs filesystem show "$dir" 2>/dev/null | awk '/uuid:/ {print $NF; exit}')
  sys=/sys/fs/btrfs/$uuid/qgroups
  # LXD/Incus enable quotas at the first sized volume; do it now so the threshold applies from the start.
  [ -n "$uuid" ] && [ ! -d "$sys" ] && btrfs quota enable "$dir"
  [ -n "$uuid" ] && [ -d "$sys" ] || return 0
  [ -w "$sys/drop_subtree_threshold" ] && echo 8 > "$sys/drop_subtree_threshold"
  if [ "$(cat "$sys/inconsistent" 2>/dev/null)" = 1 ]; then
    say "btrfs: rescanning the qgroups of $dir (they were inconsistent: sizes not enforced)"
    btrfs quota rescan -w "$dir" >/dev/null
  fi
}

ensure_https() {
  # HTTPS listeners for the TLS, trust and cluster tests: loopback, and the test bridge's own address
  # (a second listener, cluster.https_address) for the CPI running inside a guest on that bridge.
  local cli=$1 addr=$2 bridge_addr=$3
  if [ -z "$($cli config get core.https_address 2>/dev/null)" ]; then
    say "$cli: listening on https://$addr"
    $cli config set core.https_address "$addr"
  fi
  if [ -z "$($cli config get cluster.https_address 2>/dev/null)" ]; then
    say "$cli: also listening on https://$bridge_addr (the test bridge)"
    $cli config set cluster.https_address "$bridge_addr"
  fi
  touch "$STATE_DIR/$cli.listens-on-bridge"
}

ensure_libvirt_pool() {
  local pool=boshcpi-test dir=/var/lib/boshcpi-dev/libvirt-pool
  mkdir -p "$dir"
  if ! virsh -c qemu:///system pool-info "$pool" >/dev/null 2>&1; then
    say "libvirt: defining dir pool $pool"
    virsh -c qemu:///system pool-define-as "$pool" dir --target "$dir" >/dev/null
    virsh -c qemu:///system pool-autostart "$pool" >/dev/null
  fi
  if ! virsh -c qemu:///system pool-info "$pool" 2>/dev/null | grep running >/dev/null; then
    # libvirtd may be autostarting it right now: tolerate "already active".
    virsh -c qemu:///system pool-start "$pool" >/dev/null 2>&1 \
      || virsh -c qemu:///system pool-info "$pool" 2>/dev/null | grep running >/dev/null
  fi
}

ensure_libvirt_network() {
  # An isolated network: no <forward>, so nothing routes out of it.
  local net=boshcpi-test-net
  if ! virsh -c qemu:///system net-info "$net" >/dev/null 2>&1; then
    say "libvirt: defining isolated network $net (10.245.30.0/24)"
    local xml; xml=$(mktemp)
    cat > "$xml" <<XML
<network><name>$net</name><bridge name='boshcpi-virbr0' stp='on' delay='0'/>
<ip address='10.245.30.1' netmask='255.255.255.0'/></network>
XML
    virsh -c qemu:///system net-define "$xml" >/dev/null
    rm -f "$xml"
    virsh -c qemu:///system net-autostart "$net" >/dev/null
  fi
  if ! virsh -c qemu:///system net-info "$net" 2>/dev/null | grep -E 'Active: +yes' >/dev/null; then
    virsh -c qemu:///system net-start "$net" >/dev/null 2>&1 \
      || virsh -c qemu:///system net-info "$net" 2>/dev/null | grep -E 'Active: +yes' >/dev/null
  fi
}

need_root
case "${1:-all}" in
  packages) install_all ;;
  daemons) start_lxcfs; start_lxd; start_incus; start_libvirt ;;
  all|*)
    install_all
    start_lxcfs; start_lxd; start_incus
    # The bridges first: libvirtd listens on the LXD bridge's address.
    ensure_resources lxc boshcpi-btrfs boshcpi-lxdbr0 10.245.10.1/24
    ensure_resources incus boshcpi-btrfs boshcpi-incbr0 10.245.20.1/24
    start_libvirt
    ensure_btrfs_quota /var/lib/lxd/storage-pools/boshcpi-btrfs
    ensure_btrfs_quota /var/lib/incus/storage-pools/boshcpi-btrfs
    ensure_https lxc 127.0.0.1:8443 10.245.10.1:8443
    ensure_https incus 127.0.0.1:8444 10.245.20.1:8444
    ensure_libvirt_pool
    ensure_libvirt_network
    say "ready: lxd, incus, libvirt"
    ;;
esac
