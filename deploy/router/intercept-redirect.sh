#!/bin/bash
# intercept-redirect.sh up|down
#
# REDIRECT interception of the LAN's FTP control connections for ftpalg
# (--mode transparent --interception redirect, without --intercept), for
# operators who manage the router's rules themselves. These are the
# commands of rules/intercept/README.md ("Managing the rules yourself":
# REDIRECT, and the divert), for IPv4 and IPv6, in chains named FTP-…:
# FTPALG-… chains and "proto 70" routing are ftpalg's own, and every
# ftpalg start removes what it finds under those names.
#
#   up    install; a rule, chain, ip rule or route already there is left
#         as it is, so running it again changes nothing
#   down  remove; what is not there is skipped
#
# Run `down` with the same settings as `up`. Settings (environment,
# defaults in brackets):
#
#   LAN4         clients' IPv4 network [198.51.100.0/24], "" for none
#   LAN6         clients' IPv6 network [2001:db8:1::/64], "" for none
#   LAN_IF       clients' incoming interface [lan0], "" for none; a
#                connection is intercepted when it comes from LAN4/LAN6
#                OR in through LAN_IF
#   FAMILIES     address families to touch ["4 6"]; a family without a
#                network and without LAN_IF is skipped, and so is IPv6 when
#                it is disabled (net.ipv6.conf.lo.disable_ipv6)
#   FTP_PORT     control port to intercept [21]
#   LISTEN_PORT  ftpalg's --listen port [2121] (ftpalg listens on the
#                wildcard address, e.g. --listen 0.0.0.0:2121; for IPv6
#                start a second ftpalg on [::]:2121)
#   DIVERT       1: also install the transparent-socket divert and its
#                policy routing, which ftpalg's data connections need; run
#                ftpalg with --divert=false then. 0: leave the divert to
#                ftpalg (its default, --divert) [1]
#   MARK         fwmark bit of the divert [0x1]
#   TABLE        routing table of the divert's local route [100]
#   IPTABLES, IP6TABLES  the binaries [iptables, ip6tables]; the variant
#                (nft or legacy) of the host's own ruleset
#
# The INPUT accepts are not installed here (rules/intercept/README.md,
# "Your INPUT chain"): iptables -A INPUT -p tcp --dport 2121 -j ACCEPT,
# and with the divert -m mark --mark 0x1/0x1.
set -Eeuo pipefail

LAN4=${LAN4-198.51.100.0/24}
LAN6=${LAN6-2001:db8:1::/64}
LAN_IF=${LAN_IF-lan0}
FAMILIES=${FAMILIES-4 6}
FTP_PORT=${FTP_PORT:-21}
LISTEN_PORT=${LISTEN_PORT:-2121}
DIVERT=${DIVERT:-1}
MARK=${MARK:-0x1}
TABLE=${TABLE:-100}
IPTABLES=${IPTABLES:-iptables}
IP6TABLES=${IP6TABLES:-ip6tables}

CHAIN=FTP-REDIRECT
DIVERT_CHAIN=FTP-DIVERT

# ipt FAMILY ARGS...: iptables or ip6tables, waiting for the xtables lock.
ipt() {
	local f=$1
	shift
	if [ "$f" = 4 ]; then "$IPTABLES" -w "$@"; else "$IP6TABLES" -w "$@"; fi
}

# has_chain FAMILY TABLE CHAIN
has_chain() { ipt "$1" -t "$2" -S "$3" >/dev/null 2>&1; }

# new_chain FAMILY TABLE CHAIN: create unless there.
new_chain() { has_chain "$@" || ipt "$1" -t "$2" -N "$3"; }

# append FAMILY TABLE CHAIN SPEC...: -A unless the rule is there.
append() {
	local f=$1 t=$2 c=$3
	shift 3
	ipt "$f" -t "$t" -C "$c" "$@" 2>/dev/null || ipt "$f" -t "$t" -A "$c" "$@"
}

# insert_first FAMILY TABLE CHAIN SPEC...: -I CHAIN 1 unless the rule is there.
insert_first() {
	local f=$1 t=$2 c=$3
	shift 3
	ipt "$f" -t "$t" -C "$c" "$@" 2>/dev/null || ipt "$f" -t "$t" -I "$c" 1 "$@"
}

# delete FAMILY TABLE CHAIN SPEC...: -D every copy of the rule.
delete() {
	local f=$1 t=$2 c=$3
	shift 3
	while ipt "$f" -t "$t" -C "$c" "$@" 2>/dev/null; do
		ipt "$f" -t "$t" -D "$c" "$@"
	done
}

# drop_chain FAMILY TABLE CHAIN: -F and -X if there.
drop_chain() {
	if has_chain "$@"; then
		ipt "$1" -t "$2" -F "$3"
		ipt "$1" -t "$2" -X "$3"
	fi
}

# selectors FAMILY: one match per line ("-s NET", "-i IF"); none means the
# family is skipped.
selectors() {
	local net=$LAN4
	[ "$1" = 6 ] && net=$LAN6
	[ -n "$net" ] && echo "-s $net"
	[ -n "$LAN_IF" ] && echo "-i $LAN_IF"
	return 0
}

# any FAMILY: the `local` route's destination.
any() { if [ "$1" = 4 ]; then echo 0.0.0.0/0; else echo ::/0; fi; }

routing_up() {
	local f=$1
	if [ -z "$(ip -"$f" rule list fwmark "$MARK/$MARK" lookup "$TABLE")" ]; then
		ip -"$f" rule add fwmark "$MARK/$MARK" lookup "$TABLE"
	fi
	if [ -z "$(ip -"$f" route show table "$TABLE" type local dev lo "$(any "$f")" 2>/dev/null)" ]; then
		ip -"$f" route add local "$(any "$f")" dev lo table "$TABLE"
	fi
}

routing_down() {
	local f=$1
	while [ -n "$(ip -"$f" rule list fwmark "$MARK/$MARK" lookup "$TABLE")" ]; do
		ip -"$f" rule del fwmark "$MARK/$MARK" lookup "$TABLE"
	done
	if [ -n "$(ip -"$f" route show table "$TABLE" type local dev lo "$(any "$f")" 2>/dev/null)" ]; then
		ip -"$f" route del local "$(any "$f")" dev lo table "$TABLE"
	fi
}

up() {
	local f=$1 sel
	if [ "$DIVERT" = 1 ]; then
		routing_up "$f"
		new_chain "$f" mangle "$DIVERT_CHAIN"
		append "$f" mangle "$DIVERT_CHAIN" -p tcp -m socket --transparent -j MARK --set-xmark "$MARK/$MARK"
		insert_first "$f" mangle PREROUTING -p tcp -j "$DIVERT_CHAIN"
	fi
	new_chain "$f" nat "$CHAIN"
	while read -r sel; do
		# shellcheck disable=SC2086 # "-s NET" / "-i IF" are two words
		append "$f" nat "$CHAIN" $sel -p tcp -j REDIRECT --to-ports "$LISTEN_PORT"
	done < <(selectors "$f")
	insert_first "$f" nat PREROUTING -p tcp --dport "$FTP_PORT" -j "$CHAIN"
}

down() {
	local f=$1
	delete "$f" nat PREROUTING -p tcp --dport "$FTP_PORT" -j "$CHAIN"
	drop_chain "$f" nat "$CHAIN"
	if [ "$DIVERT" = 1 ]; then
		delete "$f" mangle PREROUTING -p tcp -j "$DIVERT_CHAIN"
		drop_chain "$f" mangle "$DIVERT_CHAIN"
		routing_down "$f"
	fi
}

case ${1-} in
up | down) ;;
*)
	echo "usage: $0 up|down (settings: see the top of this script)" >&2
	exit 2
	;;
esac
action=$1
for f in $FAMILIES; do
	case $f in
	4 | 6) ;;
	*)
		echo "$0: FAMILIES: want 4 and/or 6, not $f" >&2
		exit 2
		;;
	esac
	if [ "$1" = up ] && [ -z "$(selectors "$f")" ]; then
		echo "$0: IPv$f: no network and no interface, skipped" >&2
		continue
	fi
	if [ "$1" = up ] && [ "$f" = 6 ] && [ "$(cat /proc/sys/net/ipv6/conf/lo/disable_ipv6 2>/dev/null || echo 1)" = 1 ]; then
		echo "$0: IPv6 is disabled here, skipped (FAMILIES=4 says so quietly)" >&2
		continue
	fi
	trap 'echo "$0 $action: failed for IPv$f (see above); \"$0 down\" removes what is there" >&2' ERR
	"$action" "$f"
	trap - ERR
done
