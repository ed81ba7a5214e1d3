package ftp

import (
	"errors"
	"net/netip"
	"testing"
)

var (
	ap4  = netip.MustParseAddrPort("127.0.0.1:40000")
	ap6  = netip.MustParseAddrPort("[2001:db8::1]:40000")
	ap4m = netip.MustParseAddrPort("[::ffff:192.0.2.7]:5000")
)

// checkAddrResult compares a parser's result with the expectation of a table
// row: wantErr nil means success with want; otherwise errors.Is(err, wantErr).
func checkAddrResult(t *testing.T, in string, got netip.AddrPort, err error, want netip.AddrPort, wantErr error) {
	t.Helper()
	if wantErr != nil {
		if !errors.Is(err, wantErr) {
			t.Errorf("%q: got %v, %v; want error %v", in, got, err, wantErr)
		}
		return
	}
	if err != nil || got != want {
		t.Errorf("%q: got %v, %v; want %v", in, got, err, want)
	}
}

func TestParsePASV(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.AddrPort
		wantErr error
	}{
		{"Entering Passive Mode (127,0,0,1,156,64).", ap4, nil},
		{"Entering Passive Mode (127,0,0,1,156,64)", ap4, nil},
		{"Entering passive mode (127,0,0,1,156,64).", ap4, nil},
		{"PASV ok (127,0,0,1,156,64)", ap4, nil},
		{"(127,0,0,1,156,64)", ap4, nil},
		{"Entering Passive Mode. 127,0,0,1,156,64", ap4, nil},       // RFC 959 Fig. 3
		{"Entering Passive Mode 127,0,0,1,156,64.", ap4, nil},       // trailing period
		{"Entering Passive Mode (127, 0, 0, 1, 156, 64)", ap4, nil}, // spaces around commas
		{"Entering Passive Mode ( 127,0,0,1,156,64 )", ap4, nil},
		{"Entering Passive Mode (127,000,000,001,0156,064)", ap4, nil}, // decimal, not octal
		{"Entering Passive Mode (00127,0,0,1,156,64)", ap4, nil},       // 5 digits allowed
		{"Entering Passive Mode (127,0,0,1,156,64) (192,0,2,9,0,21)", ap4, nil},
		{"Entering Passive Mode (127,0,0,1,156,64),(192,0,2,9,0,21)", ap4, nil},
		{"Entering Passive Mode (0,0,0,0,156,64)", netip.MustParseAddrPort("0.0.0.0:40000"), nil},
		{"Entering Passive Mode (255,255,255,255,255,255)", netip.MustParseAddrPort("255.255.255.255:65535"), nil},
		{"Entering Passive Mode (127,0,0,1,0,1)", netip.MustParseAddrPort("127.0.0.1:1"), nil},

		{"", netip.AddrPort{}, ErrSyntax},
		{"Logout.", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode ()", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (::1,156,64).", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (1,131,233).", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,156)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,156,64,1)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode 127,0,0,1,156,64,1", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode 127,0,0,1,156,641", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,256,156,64)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,256,64)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (1216,256,2,127,127,127)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,18446744073709551772,64)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (000127,0,0,1,156,64)", netip.AddrPort{}, ErrSyntax}, // 6 digits
		{"Entering Passive Mode (127,0,0,1,-100,64)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (-127,0,0,1,156,64)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode -127,0,0,1,156,64", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode +127,0,0,1,156,64", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,15 6,64)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,156,64 192,0,2,9,0,21)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,156,64", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,156,64.", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,,156,64)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127,0,0,1,0,0)", netip.AddrPort{}, ErrSyntax}, // port 0
		{"Entering Passive Mode (v4) (127,0,0,1,156,64)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (0x7f,0,0,1,156,64)", netip.AddrPort{}, ErrSyntax},
		{"Entering Passive Mode (127;0;0;1;156;64)", netip.AddrPort{}, ErrSyntax},
	}
	for _, tt := range tests {
		got, err := ParsePASV(tt.in)
		checkAddrResult(t, tt.in, got, err, tt.want, tt.wantErr)
	}
}

func TestParseEPSV(t *testing.T) {
	tests := []struct {
		in      string
		want    EPSVReply
		wantErr error
	}{
		{"Entering Extended Passive Mode (|||40000|)", EPSVReply{Port: 40000}, nil},
		{"Entering extended passive mode (|||40000|).", EPSVReply{Port: 40000}, nil},
		{"(|||6446|)", EPSVReply{Port: 6446}, nil},
		{"Entering Extended Passive Mode (!!!9447!).", EPSVReply{Port: 9447}, nil}, // IBM
		{"Entering Extended Passive Mode (###40000#)", EPSVReply{Port: 40000}, nil},
		{"Entering Extended Passive Mode (~~~40000~)", EPSVReply{Port: 40000}, nil},
		{"Entering Extended Passive Mode (||40000|)", EPSVReply{Port: 40000}, nil}, // BulletProof
		{"Entering Extended Passive Mode (|||04000|)", EPSVReply{Port: 4000}, nil},
		{"Entering Extended Passive Mode (|||65535|)", EPSVReply{Port: 65535}, nil},
		{"Entering Extended Passive Mode (|||1|)", EPSVReply{Port: 1}, nil},
		{"Entering Extended Passive Mode (|||40000|) (|||1|)", EPSVReply{Port: 40000}, nil},
		{"Entering Extended Passive Mode (|1|192.0.2.10|40000|)", // glFTPd CEPR
			EPSVReply{Port: 40000, Addr: netip.MustParseAddr("192.0.2.10")}, nil},
		{"Entering Extended Passive Mode (|2|2001:db8::10|40000|)",
			EPSVReply{Port: 40000, Addr: netip.MustParseAddr("2001:db8::10")}, nil},

		{"", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode |||40000|", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|||40000|", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode ()", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (||)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (||||)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (||||40000|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|!|40000|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|||40000!)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (111400001)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (   40000 )", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (\x7f\x7f\x7f40000\x7f)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|||0|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|||65536|)", EPSVReply{}, ErrSyntax},
		{"Entering Passiv Mode (|||1000000|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|||-1|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|||+40000|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (||| 40000|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|||4OOOO|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|1|2001:db8::10|40000|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|1||40000|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (||::1|40000|)", EPSVReply{}, ErrSyntax},
		{"Entering Extended Passive Mode (|3|192.0.2.10|40000|)", EPSVReply{}, ErrFamily},
	}
	for _, tt := range tests {
		got, err := ParseEPSV(tt.in)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("%q: got %+v, %v; want error %v", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: got %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParsePORT(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.AddrPort
		wantErr error
	}{
		{"127,0,0,1,156,64", ap4, nil},
		{" 127,0,0,1,156,64", ap4, nil},
		{"127, 0, 0, 1, 156, 64", ap4, nil},
		{"127,0,0,01,0156,064", ap4, nil},
		{"192,0,2,99,0,21", netip.MustParseAddrPort("192.0.2.99:21"), nil}, // parsed; CheckActive refuses
		{"0,0,0,0,156,64", netip.MustParseAddrPort("0.0.0.0:40000"), nil},

		{"", netip.AddrPort{}, ErrSyntax},
		{"127,0,0,1,156,64 ", netip.AddrPort{}, ErrSyntax},
		{"127,0,0,1,156,64,", netip.AddrPort{}, ErrSyntax},
		{"127,0,0,1,156,64,1", netip.AddrPort{}, ErrSyntax},
		{"127,0,0,1,156", netip.AddrPort{}, ErrSyntax},
		{"127,0,0,1,300,1", netip.AddrPort{}, ErrSyntax},
		{"127,0,0,1,0,0", netip.AddrPort{}, ErrSyntax},
		{"127,0,0,1,-1,64", netip.AddrPort{}, ErrSyntax},
		{"127.0.0.1,156,64", netip.AddrPort{}, ErrSyntax},
		{"(127,0,0,1,156,64)", netip.AddrPort{}, ErrSyntax},
		{"127,0,0,1,156,64\r", netip.AddrPort{}, ErrSyntax},
	}
	for _, tt := range tests {
		got, err := ParsePORT(tt.in)
		checkAddrResult(t, tt.in, got, err, tt.want, tt.wantErr)
	}
}

func TestParseEPRT(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.AddrPort
		wantErr error
	}{
		{"|1|127.0.0.1|40000|", ap4, nil},
		{"|2|2001:db8::1|40000|", ap6, nil},
		{"|2|2001:DB8::1|40000|", ap6, nil},
		{"!1!127.0.0.1!40000!", ap4, nil},
		{"|2|::ffff:192.0.2.7|5000|", ap4m, nil}, // kept mapped: family 2 as sent
		{"|2|::|40000|", netip.MustParseAddrPort("[::]:40000"), nil},
		{"|1|127.0.0.1|04000|", netip.MustParseAddrPort("127.0.0.1:4000"), nil},

		{"", netip.AddrPort{}, ErrSyntax},
		{"|1|127.0.0.1|40000", netip.AddrPort{}, ErrSyntax},
		{"|1|127.0.0.1|40000| ", netip.AddrPort{}, ErrSyntax},
		{"|1|127.0.0.1|40000||", netip.AddrPort{}, ErrSyntax},
		{"|1!127.0.0.1|40000|", netip.AddrPort{}, ErrSyntax},
		{"111127.0.0.11400001", netip.AddrPort{}, ErrSyntax},
		{" 1 127.0.0.1 40000 ", netip.AddrPort{}, ErrSyntax},
		{"|1|::1|40000|", netip.AddrPort{}, ErrSyntax},
		{"|1|::ffff:127.0.0.1|40000|", netip.AddrPort{}, ErrSyntax},
		{"|2|127.0.0.1|40000|", netip.AddrPort{}, ErrSyntax},
		{"|2|fe80::1%eth0|40000|", netip.AddrPort{}, ErrSyntax},
		{"|1|localhost|40000|", netip.AddrPort{}, ErrSyntax},
		{"|1|127.000.000.001|40000|", netip.AddrPort{}, ErrSyntax},
		{"|1|127.1|40000|", netip.AddrPort{}, ErrSyntax},
		{"|1|127.0.0.1|0|", netip.AddrPort{}, ErrSyntax},
		{"|1|127.0.0.1|70000|", netip.AddrPort{}, ErrSyntax},
		{"|1|127.0.0.1|-1|", netip.AddrPort{}, ErrSyntax},
		{"|1|127.0.0.1||", netip.AddrPort{}, ErrSyntax},
		{"|x|127.0.0.1|40000|", netip.AddrPort{}, ErrSyntax},
		{"||127.0.0.1|40000|", netip.AddrPort{}, ErrSyntax},
		{"|3|127.0.0.1|40000|", netip.AddrPort{}, ErrFamily},
		{"|01|127.0.0.1|40000|", netip.AddrPort{}, ErrFamily},
	}
	for _, tt := range tests {
		got, err := ParseEPRT(tt.in)
		checkAddrResult(t, tt.in, got, err, tt.want, tt.wantErr)
	}
}

func TestParseLPRTAndLPSV(t *testing.T) {
	const v6 = "6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,156,64"
	tests := []struct {
		in      string
		want    netip.AddrPort
		wantErr error
	}{
		{"4,4,127,0,0,1,2,156,64", ap4, nil},
		{v6, ap6, nil},
		{"4, 4, 127, 0, 0, 1, 2, 156, 64", ap4, nil},
		{"6,16,0,0,0,0,0,0,0,0,0,0,255,255,192,0,2,7,2,19,136", ap4m, nil},

		{"", netip.AddrPort{}, ErrSyntax},
		{"4,4", netip.AddrPort{}, ErrSyntax},
		{"4,4,127,0,0,1,2,156", netip.AddrPort{}, ErrSyntax},
		{"4,16,127,0,0,1,2,156,64", netip.AddrPort{}, ErrSyntax},
		{"6,4,127,0,0,1,2,156,64", netip.AddrPort{}, ErrSyntax},
		{"4,4,127,0,0,1,3,0,156,64", netip.AddrPort{}, ErrSyntax},
		{"4,4,127,0,0,1,1,156", netip.AddrPort{}, ErrSyntax},
		{"4,4,127,0,0,1,2,0,0", netip.AddrPort{}, ErrSyntax},
		{"4,4,127,0,0,256,2,156,64", netip.AddrPort{}, ErrSyntax},
		{"5,4,127,0,0,1,2,156,64", netip.AddrPort{}, ErrFamily},
		{"0,4,127,0,0,1,2,156,64", netip.AddrPort{}, ErrFamily},
	}
	for _, tt := range tests {
		got, err := ParseLPRT(tt.in)
		checkAddrResult(t, "LPRT "+tt.in, got, err, tt.want, tt.wantErr)
		got, err = ParseLPSV("Entering Long Passive Mode (" + tt.in + ")")
		checkAddrResult(t, "228 "+tt.in, got, err, tt.want, tt.wantErr)
	}
	// Forms only one of the two accepts.
	lprtErr := []string{"4,4,127,0,0,1,2,156,64,", "4,4,127,0,0,1,2,156,64 x", "(4,4,127,0,0,1,2,156,64)"}
	for _, in := range lprtErr {
		if ap, err := ParseLPRT(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("LPRT %q: got %v, %v; want a syntax error", in, ap, err)
		}
	}
	lpsvErr := []string{"Entering Long Passive Mode 4,4,127,0,0,1,2,156,64", "(4,4,127,0,0,1,2,156,64", "(4,4,127,0,0,1,2,156,64,1)"}
	for _, in := range lpsvErr {
		if ap, err := ParseLPSV(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("228 %q: got %v, %v; want a syntax error", in, ap, err)
		}
	}
	if ap, err := ParseLPSV("Entering Long Passive Mode ( 4,4,127,0,0,1,2,156,64 )."); err != nil || ap != ap4 {
		t.Errorf("228 with spaces: got %v, %v", ap, err)
	}
}

func TestFormat(t *testing.T) {
	tests := []struct{ got, want string }{
		{FormatPASV(ap4), "Entering Passive Mode (127,0,0,1,156,64)."},
		{FormatPASV(netip.MustParseAddrPort("[::ffff:10.0.0.1]:1")), "Entering Passive Mode (10,0,0,1,0,1)."},
		{FormatEPSV(40000), "Entering Extended Passive Mode (|||40000|)"},
		{FormatLPSV(ap4), "Entering Long Passive Mode (4,4,127,0,0,1,2,156,64)"},
		{FormatLPSV(ap6), "Entering Long Passive Mode (6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,156,64)"},
		{FormatPORT(ap4), "127,0,0,1,156,64"},
		{FormatPORT(netip.MustParseAddrPort("[::ffff:10.0.0.1]:65535")), "10,0,0,1,255,255"},
		{FormatEPRT(ap4), "|1|127.0.0.1|40000|"},
		{FormatEPRT(ap6), "|2|2001:db8::1|40000|"},
		{FormatEPRT(ap4m), "|1|192.0.2.7|5000|"},
		{FormatLPRT(ap4), "4,4,127,0,0,1,2,156,64"},
		{FormatLPRT(ap4m), "4,4,192,0,2,7,2,19,136"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

// TestFormatParseRoundTrip formats addresses and parses them back.
func TestFormatParseRoundTrip(t *testing.T) {
	v4 := []netip.AddrPort{
		ap4,
		netip.MustParseAddrPort("0.0.0.0:1"),
		netip.MustParseAddrPort("255.255.255.255:65535"),
		netip.MustParseAddrPort("10.1.2.3:256"),
		netip.MustParseAddrPort("192.0.2.7:255"),
	}
	v6 := []netip.AddrPort{
		ap6,
		netip.MustParseAddrPort("[::1]:1"),
		netip.MustParseAddrPort("[::]:65535"),
		netip.MustParseAddrPort("[fe80::1:2:3:4]:1024"),
		netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:2"),
	}
	for _, ap := range v4 {
		if got, err := ParsePASV(FormatPASV(ap)); err != nil || got != ap {
			t.Errorf("PASV %v: got %v, %v", ap, got, err)
		}
		if got, err := ParsePORT(FormatPORT(ap)); err != nil || got != ap {
			t.Errorf("PORT %v: got %v, %v", ap, got, err)
		}
		// A v4-mapped address formats as plain IPv4.
		mapped := netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
		if got, err := ParsePASV(FormatPASV(mapped)); err != nil || got != ap {
			t.Errorf("PASV %v: got %v, %v", mapped, got, err)
		}
		if got, err := ParseEPRT(FormatEPRT(mapped)); err != nil || got != ap {
			t.Errorf("EPRT %v: got %v, %v", mapped, got, err)
		}
		if got, err := ParseLPRT(FormatLPRT(mapped)); err != nil || got != ap {
			t.Errorf("LPRT %v: got %v, %v", mapped, got, err)
		}
	}
	for _, ap := range append(v4, v6...) {
		if got, err := ParseEPRT(FormatEPRT(ap)); err != nil || got != ap {
			t.Errorf("EPRT %v: got %v, %v", ap, got, err)
		}
		if got, err := ParseLPRT(FormatLPRT(ap)); err != nil || got != ap {
			t.Errorf("LPRT %v: got %v, %v", ap, got, err)
		}
		if got, err := ParseLPSV(FormatLPSV(ap)); err != nil || got != ap {
			t.Errorf("LPSV %v: got %v, %v", ap, got, err)
		}
		if got, err := ParseEPSV(FormatEPSV(ap.Port())); err != nil || got != (EPSVReply{Port: ap.Port()}) {
			t.Errorf("EPSV %d: got %+v, %v", ap.Port(), got, err)
		}
	}
}
