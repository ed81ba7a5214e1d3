package ftp

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		in   string
		verb string
		arg  string
		kind Kind
	}{
		{"PASV", "PASV", "", KindPASV},
		{"pasv", "PASV", "", KindPASV},
		{"CPSV", "CPSV", "", KindPASV},
		{"EPSV", "EPSV", "", KindEPSV},
		{"EPSV 2", "EPSV", "2", KindEPSV},
		{"EPSV ALL", "EPSV", "ALL", KindEPSVAll},
		{"epsv all", "EPSV", "all", KindEPSVAll},
		{"EPSV  ALL ", "EPSV", " ALL ", KindEPSVAll},
		{"EPSV\tALL", "EPSV", "ALL", KindEPSVAll},
		{"EPSV ALLX", "EPSV", "ALLX", KindEPSV},
		{"LPSV", "LPSV", "", KindLPSV},
		{"PORT 127,0,0,1,156,64", "PORT", "127,0,0,1,156,64", KindPORT},
		{"port 127,0,0,1,156,64", "PORT", "127,0,0,1,156,64", KindPORT},
		{"PORT  127,0,0,1,156,64", "PORT", " 127,0,0,1,156,64", KindPORT},
		{"PORT\t192,0,2,99,0,21", "PORT", "192,0,2,99,0,21", KindPORT},
		{"PORT\v192,0,2,99,0,21", "PORT", "192,0,2,99,0,21", KindPORT},
		{" PORT 192,0,2,99,0,21", "PORT", "192,0,2,99,0,21", KindPORT},
		{"\t PORT 192,0,2,99,0,21", "PORT", "192,0,2,99,0,21", KindPORT},
		{"EPRT |1|127.0.0.1|40000|", "EPRT", "|1|127.0.0.1|40000|", KindEPRT},
		{"LPRT 4,4,127,0,0,1,2,156,64", "LPRT", "4,4,127,0,0,1,2,156,64", KindLPRT},
		{"AUTH TLS", "AUTH", "TLS", KindAUTH},
		{"ABOR", "ABOR", "", KindABOR},
		{"QUIT", "QUIT", "", KindQUIT},
		{"REIN", "REIN", "", KindREIN},
		{"PASS secret words", "PASS", "secret words", KindPASS},
		{"RETR a file.txt", "RETR", "a file.txt", KindOther},
		{"", "", "", KindOther},
		{"PORT,192,0,2,99,0,21", "PORT,192,0,2,99,0,21", "", KindOther},
		{"PO RT 1,2,3,4,5,6", "PO", "RT 1,2,3,4,5,6", KindOther},
		{"PORTX 1,2,3,4,5,6", "PORTX", "1,2,3,4,5,6", KindOther},
		// Only ASCII letters are upper-cased: "ſ" is not "S" to a server.
		{"PAſV", "PAſV", "", KindOther},
		{"pa\xffsv", "PA\xffSV", "", KindOther},
	}
	for _, tt := range tests {
		c := ParseCommand([]byte(tt.in))
		if c.Verb != tt.verb || c.Arg != tt.arg || c.Kind != tt.kind {
			t.Errorf("%q: %q %q %d; want %q %q %d", tt.in, c.Verb, c.Arg, c.Kind, tt.verb, tt.arg, tt.kind)
		}
	}
}

func TestCommandClasses(t *testing.T) {
	passive := map[Kind]bool{KindPASV: true, KindEPSV: true, KindLPSV: true}
	active := map[Kind]bool{KindPORT: true, KindEPRT: true, KindLPRT: true}
	for k := KindOther; k <= KindPASS; k++ {
		c := Command{Kind: k}
		if c.Passive() != passive[k] || c.Active() != active[k] {
			t.Errorf("kind %d: Passive %v Active %v", k, c.Passive(), c.Active())
		}
	}
	if (Command{Kind: KindEPSVAll}).Passive() {
		t.Error("EPSV ALL asks for no data connection")
	}
}

func TestCommandString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"PASS hunter2", "PASS <redacted>"},
		{"pass hunter2", "PASS <redacted>"},
		{"PASS", "PASS <redacted>"},
		{"USER anonymous", "USER anonymous"},
		{"pasv", "PASV"},
	}
	for _, tt := range tests {
		if got := ParseCommand([]byte(tt.in)).String(); got != tt.want {
			t.Errorf("%q: %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseActive(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.AddrPort
		wantErr error
	}{
		{"PORT 127,0,0,1,156,64", ap4, nil},
		{"EPRT |2|2001:db8::1|40000|", ap6, nil},
		{"LPRT 4,4,127,0,0,1,2,156,64", ap4, nil},
		{"PORT\t127,0,0,1,156,64", ap4, nil},
		{"EPRT |3|127.0.0.1|40000|", netip.AddrPort{}, ErrFamily},
		{"LPRT 5,4,127,0,0,1,2,156,64", netip.AddrPort{}, ErrFamily},
		{"PORT 127,0,0,1,156,64 x", netip.AddrPort{}, ErrSyntax},
		{"PORT", netip.AddrPort{}, ErrSyntax},
		{"PASV", netip.AddrPort{}, ErrSyntax},
		{"RETR x", netip.AddrPort{}, ErrSyntax},
	}
	for _, tt := range tests {
		got, err := ParseActive(ParseCommand([]byte(tt.in)))
		checkAddrResult(t, tt.in, got, err, tt.want, tt.wantErr)
	}
}

func TestCheckActive(t *testing.T) {
	a := netip.MustParseAddr
	ap := netip.MustParseAddrPort
	tests := []struct {
		name      string
		announced netip.AddrPort
		client    netip.Addr
		want      error
	}{
		{"own v4", ap("127.0.0.1:40000"), a("127.0.0.1"), nil},
		{"own v6", ap("[2001:db8::1]:40000"), a("2001:db8::1"), nil},
		{"lowest unprivileged", ap("127.0.0.1:1024"), a("127.0.0.1"), nil},
		{"highest port", ap("127.0.0.1:65535"), a("127.0.0.1"), nil},
		{"v4-mapped announced, v4 client", ap("[::ffff:127.0.0.1]:40000"), a("127.0.0.1"), nil},
		{"v4 announced, v4-mapped client", ap("127.0.0.1:40000"), a("::ffff:127.0.0.1"), nil},
		{"both v4-mapped", ap("[::ffff:10.0.0.1]:40000"), a("::ffff:10.0.0.1"), nil},
		{"link-local, client with zone", ap("[fe80::1]:40000"), a("fe80::1%eth0"), nil},

		{"third party v4", ap("192.0.2.99:21"), a("127.0.0.1"), ErrBounce},
		{"third party v6", ap("[2001:db8::2]:40000"), a("2001:db8::1"), ErrBounce},
		{"v4-mapped third party", ap("[::ffff:192.0.2.99]:40000"), a("127.0.0.1"), ErrBounce},
		{"v4-mapped unequal, mapped client", ap("[::ffff:192.0.2.99]:40000"), a("::ffff:127.0.0.1"), ErrBounce},
		{"v4 for a v6 client", ap("127.0.0.1:40000"), a("::1"), ErrBounce},
		{"v4-compatible is not mapped", ap("[::127.0.0.1]:40000"), a("127.0.0.1"), ErrBounce},
		{"NAT64 is not the same host", ap("[64:ff9b::7f00:1]:40000"), a("127.0.0.1"), ErrBounce},
		{"loopback from a remote client", ap("127.0.0.1:40000"), a("192.0.2.1"), ErrBounce},
		{"no client address", ap("127.0.0.1:40000"), netip.Addr{}, ErrBounce},

		{"privileged", ap("127.0.0.1:22"), a("127.0.0.1"), ErrPrivilegedPort},
		{"1023", ap("127.0.0.1:1023"), a("127.0.0.1"), ErrPrivilegedPort},
		{"privileged v6", ap("[::1]:21"), a("::1"), ErrPrivilegedPort},
		{"port 0", ap("127.0.0.1:0"), a("127.0.0.1"), ErrPrivilegedPort},

		{"unspecified v4", ap("0.0.0.0:40000"), a("0.0.0.0"), ErrBadAddress},
		{"unspecified v6", ap("[::]:40000"), a("::"), ErrBadAddress},
		{"unspecified v4-mapped", ap("[::ffff:0.0.0.0]:40000"), a("127.0.0.1"), ErrBadAddress},
		{"multicast v4", ap("224.0.0.1:40000"), a("224.0.0.1"), ErrBadAddress},
		{"multicast v6", ap("[ff02::1]:40000"), a("ff02::1"), ErrBadAddress},
		{"multicast v4-mapped", ap("[::ffff:239.1.1.1]:40000"), a("127.0.0.1"), ErrBadAddress},
		{"broadcast", ap("255.255.255.255:40000"), a("255.255.255.255"), ErrBadAddress},
		{"invalid", netip.AddrPort{}, a("127.0.0.1"), ErrBadAddress},
	}
	for _, tt := range tests {
		err := CheckActive(tt.announced, tt.client)
		if tt.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}
