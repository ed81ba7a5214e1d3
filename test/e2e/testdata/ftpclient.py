#!/usr/bin/python3
"""Scriptable ftplib client for the ftpalg end-to-end tests.

usage: ftpclient.py [options] HOST PORT USER PASS MODE ACTION...

MODE is one of pasv, epsv, port, eprt. Stock ftplib picks PASV/PORT on IPv4
and EPSV/EPRT on IPv6; this client uses exactly the mode it is told to, on
either family, so the test can assert which one went over the wire.

FTPS: --tls is ftplib.FTP_TLS (AUTH TLS before USER, then PBSZ 0 and PROT P:
prot_p(), unless --clear-data), --implicit TLS from the first byte (FTP_TLS
has no implicit mode: connect() wraps the socket itself); --cafile is the
authority an ssl.SSLContext trusts (certificate and host name verified).
FTP_TLS wraps each data connection in a new TLS session: it never resumes
the control connection's session.

ACTIONs (executed in order on one control connection):
  list                 LIST, each line printed as "LIST-LINE: ..."
  get REMOTE LOCAL     RETR REMOTE into LOCAL
  put LOCAL REMOTE     STOR LOCAL as REMOTE
  get-gated REMOTE LOCAL BYTES GATE
                       RETR REMOTE into LOCAL, but after the first BYTES
                       bytes print "GATE-WAIT" and block until one byte can
                       be read from GATE (a FIFO the test writes to), then
                       read the rest: the test can hold several transfers
                       open at the same time.
  noop                 NOOP, prints "NOOP-REPLY: ..."
  abort-get REMOTE     RETR REMOTE, read a little (--abort-after bytes), then
                       abort while the data connection is still open and
                       unread (see send_abort for --abort-style), print
                       every reply as "ABORT-REPLY: ..." (426 first, then
                       225/226, when the server sends both).

The control exchange is printed (set_debuglevel(1): "*cmd* ..." and
"*resp* ..."). Exit status 0 only if every action succeeded.
"""

import argparse
import ftplib
import socket
import ssl
import sys
import time


class Modes:
    """Data connection setup in exactly the mode asked for."""

    def setup(self, mode, trust_pasv):
        self.xmode = mode
        # By default ftplib ignores the address in a 227 reply and connects
        # to the control connection's peer. The tests want to know that the
        # advertised address is right, so trust it unless told otherwise.
        self.trust_server_pasv_ipv4_address = trust_pasv

    def makepasv(self):
        if self.xmode == "epsv":
            return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
        if self.xmode == "pasv":
            if self.af != socket.AF_INET:
                raise SystemExit("PASV is IPv4 only")
            untrusted_host, port = ftplib.parse227(self.sendcmd("PASV"))
            if self.trust_server_pasv_ipv4_address:
                return untrusted_host, port
            return self.sock.getpeername()[0], port
        raise RuntimeError("makepasv called in active mode " + self.xmode)

    def makeport(self):
        local = self.sock.getsockname()[0]
        sock = socket.create_server((local, 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        if self.xmode == "eprt":
            self.sendeprt(local, port)
        elif self.xmode == "port":
            if self.af != socket.AF_INET:
                raise SystemExit("PORT is IPv4 only")
            self.sendport(local, port)
        else:
            raise RuntimeError("makeport called in passive mode " + self.xmode)
        if self.timeout is not None:
            sock.settimeout(self.timeout)
        return sock


def bind(source):
    """ftplib's source_address for a source address (None: any).

    It binds the control connection and (in ftplib's ntransfercmd) every
    passive data connection; makeport listens on the control connection's
    local address."""
    return (source, 0) if source else None


class Client(Modes, ftplib.FTP):
    def __init__(self, mode, trust_pasv, timeout, source=None):
        ftplib.FTP.__init__(self, timeout=timeout, source_address=bind(source))
        self.setup(mode, trust_pasv)


class TLSClient(Modes, ftplib.FTP_TLS):
    def __init__(self, mode, trust_pasv, timeout, context, implicit, source=None):
        ftplib.FTP_TLS.__init__(self, context=context, timeout=timeout, source_address=bind(source))
        self.setup(mode, trust_pasv)
        self.implicit = implicit

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        if not self.implicit:
            return super().connect(host, port)
        # Implicit FTPS: the greeting already comes over TLS, so login()
        # sends no AUTH (the socket is an SSLSocket).
        self.host, self.port = host, port
        sock = socket.create_connection((host, port), self.timeout, source_address=self.source_address)
        self.af = sock.family
        self.sock = self.context.wrap_socket(sock, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        print("*tls* implicit %s %s" % (self.sock.version(), self.sock.cipher()[0]), flush=True)
        self.welcome = self.getresp()
        return self.welcome


def send_abort(ftp, style, conn):
    """Send ABOR during a transfer and return the first reply.

    The data connection conn is still open and unread when ABOR goes out
    (so the server is blocked writing); it is closed right after ABOR is
    sent, as lftp and BSD ftp do. (Keeping it open until the replies
    arrive deadlocks proftpd, which lingers on the data connection before
    it answers ABOR.)

    telnet: the RFC 959 sequence most clients (BSD ftp, lftp) use: Telnet
            IAC IP, then IAC DM as urgent data (the "Synch"), then
            "ABOR\\r\\n" as ordinary data. The default.
    stock:  ftplib's own FTP.abort(), which sends all of "ABOR\\r\\n" as urgent
            (MSG_OOB) data, so the urgent pointer marks the final "\\n". Neither
            vsftpd ("500 Unknown command") nor proftpd (loses the "\\n" and
            never answers) copes with that even without a proxy, so it is
            not used by the tests. The data connection is closed first.
    plain:  "ABOR\\r\\n" without any urgent data.
    """
    if style == "stock":
        conn.close()
        return ftp.abort()
    if style == "telnet":
        ftp.sock.sendall(b"\xff\xf4\xff")  # IAC IP IAC
        ftp.sock.send(b"\xf2", socket.MSG_OOB)  # DM, urgent
        ftp.sock.sendall(b"ABOR\r\n")
    elif style == "plain":
        ftp.sock.sendall(b"ABOR\r\n")
    else:
        raise SystemExit("unknown abort style " + style)
    print("*cmd* 'ABOR' (%s)" % style, flush=True)
    conn.close()
    resp = ftp.getmultiline()
    if resp[:3] not in {"426", "225", "226"}:
        raise ftplib.error_proto(resp)
    return resp


def abort_get(ftp, remote, want, style):
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR " + remote)
    got = 0
    while got < want:
        chunk = conn.recv(65536)
        if not chunk:
            raise SystemExit("data connection closed after %d bytes, before abort" % got)
        got += len(chunk)
    print("ABORT-READ: %d" % got, flush=True)
    resp = send_abort(ftp, style, conn)
    print("ABORT-REPLY: " + resp, flush=True)
    if resp[:3] == "426":
        resp = ftp.getmultiline()
        print("ABORT-REPLY: " + resp, flush=True)
        if resp[:3] not in ("225", "226"):
            raise SystemExit("reply after 426 is not 225/226: " + resp)


def get_gated(ftp, remote, local, want, gate):
    ftp.voidcmd("TYPE I")
    got = 0
    waited = False
    with open(local, "wb") as f, ftp.transfercmd("RETR " + remote) as conn:
        while True:
            if not waited and got >= want:
                print("GATE-WAIT %d" % got, flush=True)
                with open(gate, "rb") as g:
                    if not g.read(1):
                        raise SystemExit("gate closed without a byte")
                waited = True
                print("GATE-PASSED", flush=True)
            chunk = conn.recv(65536)
            if not chunk:
                break
            f.write(chunk)
            got += len(chunk)
    if not waited:
        raise SystemExit("transfer ended after %d bytes, before the gate" % got)
    ftp.voidresp()


def paced(write, rate):
    """Wrap write so that, called per received block, it sleeps enough to
    keep the transfer at rate bytes/s (rate 0: no limit)."""
    if not rate:
        return write
    start = time.monotonic()
    got = 0

    def cb(block):
        nonlocal got
        write(block)
        got += len(block)
        ahead = got / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
    return cb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--ignore-pasv-address", action="store_true",
                    help="stock ftplib behaviour: connect to the control peer, not the 227 address")
    ap.add_argument("--source", default=None,
                    help="local address for the control and data connections")
    ap.add_argument("--limit-rate", type=int, default=0,
                    help="cap each download at this many bytes/s")
    ap.add_argument("--abort-after", type=int, default=1 << 20,
                    help="bytes to read before ABOR")
    ap.add_argument("--abort-style", choices=["stock", "telnet", "plain"], default="telnet",
                    help="how abort-get sends ABOR (see send_abort)")
    ap.add_argument("--tls", action="store_true", help="explicit FTPS (FTP_TLS, AUTH TLS)")
    ap.add_argument("--implicit", action="store_true", help="implicit FTPS (TLS from the first byte)")
    ap.add_argument("--cafile", help="authority that signs the server's certificate (verification on)")
    ap.add_argument("--clear-data", action="store_true", help="FTPS without PROT P: data connections in clear")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("user")
    ap.add_argument("password")
    ap.add_argument("mode", choices=["pasv", "epsv", "port", "eprt"])
    ap.add_argument("actions", nargs="+")
    a = ap.parse_args()

    if a.tls or a.implicit:
        ctx = ssl.create_default_context(cafile=a.cafile)
        ftp = TLSClient(a.mode, not a.ignore_pasv_address, a.timeout, ctx, a.implicit, a.source)
    else:
        ftp = Client(a.mode, not a.ignore_pasv_address, a.timeout, a.source)
    ftp.set_debuglevel(1)
    ftp.connect(a.host, a.port)
    ftp.login(a.user, a.password)
    if (a.tls or a.implicit) and not a.clear_data:
        ftp.prot_p()
    ftp.set_pasv(a.mode in ("pasv", "epsv"))

    acts = list(a.actions)
    while acts:
        act = acts.pop(0)
        if act == "list":
            ftp.retrlines("LIST", lambda line: print("LIST-LINE: " + line, flush=True))
        elif act == "get":
            remote, local = acts.pop(0), acts.pop(0)
            with open(local, "wb") as f:
                ftp.retrbinary("RETR " + remote, paced(f.write, a.limit_rate))
        elif act == "put":
            local, remote = acts.pop(0), acts.pop(0)
            with open(local, "rb") as f:
                ftp.storbinary("STOR " + remote, f)
        elif act == "get-gated":
            remote, local, want, gate = acts.pop(0), acts.pop(0), int(acts.pop(0)), acts.pop(0)
            get_gated(ftp, remote, local, want, gate)
        elif act == "noop":
            print("NOOP-REPLY: " + ftp.sendcmd("NOOP"), flush=True)
        elif act == "abort-get":
            abort_get(ftp, acts.pop(0), a.abort_after, a.abort_style)
        else:
            raise SystemExit("unknown action " + act)
        sys.stdout.flush()
    ftp.quit()
    print("ALL-DONE", flush=True)


if __name__ == "__main__":
    main()
