package ftp

// Rest returns the bytes read from the stream but not yet returned as a
// line, for a caller that stops parsing (the control channel turned into
// TLS) and relays the rest of the stream as it is.
func (s *Scanner) Rest() []byte {
	var pending []byte
	if !s.done { // cur is a partial line, not the line Next last returned
		pending = s.cur.Raw
	}
	return append(append([]byte(nil), pending...), s.buf[s.start:s.end]...)
}

// Rest returns the bytes read but not yet returned as a reply.
func (rr *ReplyReader) Rest() []byte { return rr.s.Rest() }
