package ftp

// Rest returns the bytes read from the stream but not yet returned as a
// line, for a caller that stops parsing (the control channel turned into
// TLS) and relays the rest of the stream as it is.
func (s *Scanner) Rest() []byte {
	return append(append([]byte(nil), s.cur.Raw...), s.buf[s.start:s.end]...)
}

// Rest returns the bytes read but not yet returned as a reply.
func (rr *ReplyReader) Rest() []byte { return rr.s.Rest() }
