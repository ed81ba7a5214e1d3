#!/usr/bin/env bash
# Installs everything the end-to-end tests in test/e2e need on a fresh
# Debian 12 (bookworm) machine. Run as root. Idempotent: running it again
# re-installs/re-extracts the same things and changes nothing else.
#
#   sudo test/deps.sh
#
# What it does:
#   * apt-get install vsftpd, lftp, curl, python3, iptables, ipset, nftables,
#     iproute2, procps, keepalived (its --config-test checks deploy/keepalived)
#     and the shared libraries proftpd-core, its mod_tls and pure-ftpd need
#     (not installed through dpkg, see below; mod_tls's libssl3 comes with
#     vsftpd and curl).
#   * vsftpd, proftpd-core and pure-ftpd conflict with each other in apt, so
#     only vsftpd is installed as a package; proftpd-core, pure-ftpd and
#     proftpd-mod-crypto (proftpd's mod_tls.so: bookworm's proftpd-core has
#     no TLS compiled in) are downloaded with `apt-get download` and
#     unpacked with `dpkg -x` into /opt/ftpalg-test/root (no maintainer
#     scripts run, nothing is enabled).
#   * Makes sure services do not auto-start (policy-rc.d) and that
#     `ip netns` works.
#
# The Go tests find the binaries at fixed paths:
#   vsftpd     /usr/sbin/vsftpd                          (env FTPALG_VSFTPD)
#   proftpd    /opt/ftpalg-test/root/usr/sbin/proftpd    (env FTPALG_PROFTPD)
#   pure-ftpd  /opt/ftpalg-test/root/usr/sbin/pure-ftpd  (env FTPALG_PUREFTPD)
#   pure-pw    /opt/ftpalg-test/root/usr/bin/pure-pw     (env FTPALG_PUREPW)
#   mod_tls    /opt/ftpalg-test/root/usr/lib/proftpd/mod_tls.so (proftpd's ModulePath)
# Nothing is exported; the kernel must have veth, netfilter NAT and
# conntrack built in (modprobe is never called).
set -euo pipefail

PREFIX=/opt/ftpalg-test
ROOT=$PREFIX/root
CACHE=$PREFIX/debs
POLICY=/usr/sbin/policy-rc.d

log() { printf 'deps.sh: %s\n' "$*"; }
die() { printf 'deps.sh: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must be run as root"
[[ -r /etc/debian_version ]] || die "this script is for Debian 12"

# 1. Keep daemons from being started by package installation.
if [[ -e $POLICY ]]; then
	log "$POLICY already present, leaving it alone"
else
	printf '#!/bin/sh\n# written by ftpalg test/deps.sh: do not start services on install\nexit 101\n' >"$POLICY"
	chmod 0755 "$POLICY"
	log "wrote $POLICY (exit 101) so that installed services do not auto-start"
fi

# 2. Packages.
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
	vsftpd lftp curl python3 \
	iptables ipset nftables iproute2 procps keepalived \
	libhiredis0.14 libmemcached11 libmemcachedutil2 libpcre2-posix3 libsodium23

# 3. proftpd-core, proftpd-mod-crypto and pure-ftpd: download and unpack
# without installing.
# The download is skipped when the cache already holds the candidate
# versions and they are what is unpacked in $ROOT.
mkdir -p "$CACHE"
want=()
debs=(proftpd-core proftpd-mod-crypto pure-ftpd)
for pkg in "${debs[@]}"; do
	ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
	[[ -n $ver && $ver != "(none)" ]] || die "no installation candidate for $pkg"
	want+=("${pkg}_${ver//:/%3a}_")
done
have_all=1
for prefix in "${want[@]}"; do
	compgen -G "$CACHE/${prefix}*.deb" >/dev/null || have_all=0
done
stamp=$ROOT/.ftpalg-debs
if [[ $have_all == 1 && -f $stamp && "$(cat "$stamp")" == "$(cd "$CACHE" && ls -1 ./*.deb)" ]]; then
	log "${debs[*]} already unpacked in $ROOT (cached: ${want[*]})"
else
	dl=$(mktemp -d "$CACHE/.dl.XXXXXX")
	trap 'rm -rf "$dl" "$ROOT.new"' EXIT
	# Download as root into our own directory (the _apt sandbox user cannot
	# write there).
	(cd "$dl" && apt-get download -o APT::Sandbox::User=root "${debs[@]}")
	rm -f "$CACHE"/*.deb
	mv "$dl"/*.deb "$CACHE"/

	rm -rf "$ROOT.new"
	mkdir -p "$ROOT.new"
	for deb in "$CACHE"/*.deb; do
		log "extracting $(basename "$deb") into $ROOT"
		dpkg -x "$deb" "$ROOT.new"
	done
	(cd "$CACHE" && ls -1 ./*.deb) >"$ROOT.new/.ftpalg-debs"
	rm -rf "$ROOT"
	mv "$ROOT.new" "$ROOT"
fi

# 4. Check the unpacked binaries actually run (shared libraries present).
"$ROOT/usr/sbin/proftpd" --version || die "proftpd does not run"
"$ROOT/usr/sbin/pure-ftpd" --help >/dev/null 2>&1 || true # exits non-zero after printing help
"$ROOT/usr/sbin/pure-ftpd" --help 2>&1 | grep -q 'pure-ftpd v' || die "pure-ftpd does not run"
"$ROOT/usr/bin/pure-pw" --help >/dev/null 2>&1 || true
[[ -f $ROOT/usr/lib/proftpd/mod_tls.so ]] || die "proftpd's mod_tls.so missing (proftpd-mod-crypto)"
bins=("$ROOT/usr/sbin/proftpd" "$ROOT/usr/sbin/pure-ftpd" "$ROOT/usr/bin/pure-pw" "$ROOT/usr/lib/proftpd/mod_tls.so")
if ldd "${bins[@]}" | grep -q 'not found'; then
	ldd "${bins[@]}" | grep 'not found' >&2
	die "missing shared libraries"
fi
/usr/sbin/vsftpd -v </dev/null >/dev/null 2>&1 || true
[[ -x /usr/sbin/vsftpd ]] || die "vsftpd missing"
# The servers drop privileges to the user "ftp" (created by the vsftpd
# package, home /srv/ftp); vsftpd changes into its home directory.
ftp_home=$(getent passwd ftp | cut -d: -f6) || die "user ftp missing (should come with vsftpd)"
[[ -d $ftp_home ]] || die "home directory of user ftp ($ftp_home) missing"
getent group nogroup >/dev/null || die "group nogroup missing"

# 5. Network namespaces must work (no modprobe: everything must be built in
# or already loaded).
probe=ftpalg-deps-$$
if ip netns add "$probe"; then
	ok=1
	ip netns exec "$probe" ip link set lo up || ok=0
	ip link add "${probe:0:10}a" type veth peer name "${probe:0:10}b" netns "$probe" || ok=0
	ip link del "${probe:0:10}a" 2>/dev/null || true
	# What the naive-DNAT test needs: nat table, DNAT, conntrack match.
	ip netns exec "$probe" iptables -w -t nat -A PREROUTING -p tcp --dport 21 \
		-j DNAT --to-destination 192.0.2.10:21 || ok=0
	ip netns exec "$probe" iptables -w -A FORWARD -m conntrack \
		--ctstate ESTABLISHED,RELATED -j ACCEPT || ok=0
	ip netns del "$probe"
	[[ $ok == 1 ]] || die "ip netns works but veth/iptables inside a namespace do not"
else
	die "'ip netns add' failed (need CAP_SYS_ADMIN and a mountable /run/netns)"
fi

log "versions:"
curl --version | head -n1
lftp --version | head -n1
/usr/bin/python3 --version
iptables --version
"$ROOT/usr/sbin/proftpd" --version
"$ROOT/usr/sbin/pure-ftpd" --help 2>&1 | grep 'pure-ftpd v' | head -n1
log "done"
