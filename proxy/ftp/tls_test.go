package ftp

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

func TestParseAUTH(t *testing.T) {
	for in, want := range map[string]string{"TLS": AuthTLS, "tls": AuthTLS, " TLS-C ": AuthTLS, "SSL": AuthSSL, "tls-p": AuthSSL} {
		if got, err := ParseAUTH(in); err != nil || got != want {
			t.Errorf("ParseAUTH(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GSSAPI", "TLS1.2", "TLS SSL"} {
		if got, err := ParseAUTH(in); err == nil {
			t.Errorf("ParseAUTH(%q) = %q, want an error", in, got)
		}
	}
}

func TestParsePBSZ(t *testing.T) {
	for in, want := range map[string]uint32{"0": 0, " 0 ": 0, "16384": 16384, "4294967295": 1<<32 - 1} {
		if got, err := ParsePBSZ(in); err != nil || got != want {
			t.Errorf("ParsePBSZ(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "4294967296", "0x10", "1 2", "99999999999"} {
		if got, err := ParsePBSZ(in); err == nil {
			t.Errorf("ParsePBSZ(%q) = %d, want an error", in, got)
		}
	}
}

func TestParsePROT(t *testing.T) {
	for in, want := range map[string]byte{"P": 'P', "p": 'P', "C": 'C', " c ": 'C'} {
		if got, err := ParsePROT(in); err != nil || got != want {
			t.Errorf("ParsePROT(%q) = %c, %v; want %c", in, got, err, want)
		}
	}
	for _, in := range []string{"S", "E", "", "PC", "X"} {
		if _, err := ParsePROT(in); err == nil {
			t.Errorf("ParsePROT(%q): want an error", in)
		}
	}
}

func TestParseFEAT(t *testing.T) {
	raw := "211-Features:\r\n EPRT\r\n EPSV\r\n MDTM\r\n PASV\r\n AUTH TLS;SSL\r\n PBSZ\r\n PROT\r\n REST STREAM\r\n SIZE\r\n TVFS\r\n UTF8\r\n211 End\r\n"
	rr := NewReplyReader(NewReplyScanner(strings.NewReader(raw)))
	r, err := rr.Next()
	if err != nil {
		t.Fatal(err)
	}
	f, ok := ParseFEAT(r)
	if !ok || !f.Has("epsv") || !f.Has("PBSZ") || f["REST"] != "STREAM" || !f.HasAUTH(AuthTLS) || !f.HasAUTH(AuthSSL) {
		t.Fatalf("ParseFEAT = %v, %v", f, ok)
	}
	if f.Has("MLST") {
		t.Error("MLST listed")
	}
	rr = NewReplyReader(NewReplyScanner(strings.NewReader("500 Unknown command.\r\n")))
	if r, _ := rr.Next(); func() bool { _, ok := ParseFEAT(r); return ok }() {
		t.Error("a 500 parsed as features")
	}
	rr = NewReplyReader(NewReplyScanner(strings.NewReader("211-Features:\r\n AUTH TLS\r\n211 End\r\n")))
	r, _ = rr.Next()
	if f, _ := ParseFEAT(r); !f.HasAUTH(AuthTLS) || f.HasAUTH(AuthSSL) {
		t.Errorf("AUTH TLS only: %v", f)
	}
	// vsftpd lists each mechanism on a line of its own.
	rr = NewReplyReader(NewReplyScanner(strings.NewReader("211-Features:\r\n AUTH TLS\r\n AUTH SSL\r\n211 End\r\n")))
	r, _ = rr.Next()
	if f, _ := ParseFEAT(r); !f.HasAUTH(AuthTLS) || !f.HasAUTH(AuthSSL) {
		t.Errorf("AUTH on two lines: %v", f)
	}
}

func FuzzParseTLSCommands(f *testing.F) {
	for _, s := range []string{"TLS", "SSL", "0", "P", "C", "TLS-C", "4294967295", " p "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		if m, err := ParseAUTH(arg); err == nil && m != AuthTLS && m != AuthSSL {
			t.Fatalf("ParseAUTH(%q) = %q", arg, m)
		}
		if n, err := ParsePBSZ(arg); err == nil {
			digits := strings.TrimLeft(strings.TrimSpace(arg), "0")
			if digits == "" {
				digits = "0"
			}
			if strconv.FormatUint(uint64(n), 10) != digits {
				t.Fatalf("ParsePBSZ(%q) = %d", arg, n)
			}
		}
		if p, err := ParsePROT(arg); err == nil && p != 'C' && p != 'P' {
			t.Fatalf("ParsePROT(%q) = %c", arg, p)
		}
	})
}

func FuzzParseFEAT(f *testing.F) {
	f.Add([]byte("211-Features:\r\n AUTH TLS\r\n EPSV\r\n211 End\r\n"))
	f.Add([]byte("211 no features\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := NewReplyReader(NewReplyScanner(bytes.NewReader(data)))
		r, err := rr.Next()
		if err != nil {
			return
		}
		fs, ok := ParseFEAT(r)
		if !ok {
			return
		}
		for name := range fs {
			if name != strings.ToUpper(name) || strings.ContainsAny(name, " \r\n") {
				t.Fatalf("feature name %q", name)
			}
		}
	})
}
