package probe

import (
	"fmt"
	"io"
	"strings"
)

// WriteText writes r for a person: the verdict line, one line per step,
// then the findings with their advice. Everything the server sent was
// made printable when it was recorded.
func WriteText(w io.Writer, r *Report) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", r.Summary)
	c := &r.Control
	switch {
	case c.Connect.Result != ConnectOK:
		fmt.Fprintf(&b, "  control  %-22s %s\n", c.Address, resultWords(c.Connect))
	default:
		line := fmt.Sprintf("connected in %s", dur(c.Connect.ElapsedMS))
		if c.Greeting.Code != 0 {
			line += fmt.Sprintf(", %d %s", c.Greeting.Code, firstLine(c.Greeting.Text))
		}
		fmt.Fprintf(&b, "  control  %-22s %s\n", c.Connect.Address, line)
		if c.Connected {
			login := fmt.Sprintf("%s: %d %s", r.User, c.Login.Code, firstLine(c.Login.Text))
			if c.Login.Code == 0 {
				login = r.User + ": no reply"
			}
			fmt.Fprintf(&b, "  login    %s\n", login)
		}
		if c.LoginOK && c.Feat.Reply.Code != 0 {
			feat := strings.Join(c.Feat.List, ", ")
			if c.Feat.Reply.Code != 211 {
				feat = fmt.Sprintf("%d %s", c.Feat.Reply.Code, firstLine(c.Feat.Reply.Text))
			}
			fmt.Fprintf(&b, "  FEAT     %s\n", feat)
		}
	}
	for _, m := range r.Modes {
		fmt.Fprintf(&b, "  %-8s %s\n", m.Name, modeLine(&m))
	}
	if len(r.Findings) > 0 {
		b.WriteString("\n")
	}
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "%-7s %s\n", f.Severity+":", f.Title)
		if f.Detail != "" {
			fmt.Fprintf(&b, "        %s\n", f.Detail)
		}
		if f.Advice != "" {
			fmt.Fprintf(&b, "        → %s\n", f.Advice)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// modeLine is one mode in a line: "229 → 192.0.2.10:40012: timeout
// after 5s; LIST 226, 312 bytes".
func modeLine(m *Mode) string {
	if m.Skipped != "" {
		return m.Skipped
	}
	if m.Reply.Code == 0 {
		return "no reply"
	}
	s := fmt.Sprintf("%d", m.Reply.Code)
	switch {
	case m.Passive && m.Announced != "":
		s += " → " + m.Announced
		if m.AnnouncedClass != ClassPublic {
			s += " (" + string(m.AnnouncedClass) + ")"
		}
	case m.Passive:
		s += " " + firstLine(m.Reply.Text)
	case m.Reply.Code/100 != 2:
		s = m.Command + ": " + s + " " + firstLine(m.Reply.Text)
	default:
		s = m.Command + ": " + s
	}
	if m.Error != "" {
		s += ": " + m.Error
	}
	var parts []string
	for _, a := range m.Attempts {
		switch {
		case a.Source == SourceServer && a.Result == ConnectOK:
			parts = append(parts, "the server connected back from "+m.DataPeer)
		case a.Source == SourceServer:
			parts = append(parts, "the server did not connect back: "+resultWords(a))
		case a.Result == ConnectOK:
			parts = append(parts, fmt.Sprintf("%s connected in %s", a.Address, dur(a.ElapsedMS)))
		default:
			parts = append(parts, a.Address+" "+resultWords(a))
		}
	}
	if len(parts) > 0 {
		s += "; " + strings.Join(parts, ", ")
	}
	if l := m.List; l != nil {
		switch {
		case l.Completed:
			s += fmt.Sprintf("; LIST %d, %d bytes", l.Reply.Code, l.Bytes)
		case l.Reply.Code != 0:
			s += fmt.Sprintf("; LIST %d %s", l.Reply.Code, firstLine(l.Reply.Text))
		default:
			s += "; LIST failed: " + l.Error
		}
	}
	return s
}
