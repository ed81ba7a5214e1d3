package proxy

// Log messages an operator's log queries and the tests match on. They are
// constants so a query and the code cannot drift apart; change one only
// together with the docs that quote it. Every session line also carries
// the fields "session", "client" and (once connected) "server".
const (
	MsgSessionStarted  = "session started"
	MsgSessionEnded    = "session ended"   // field reason
	MsgSessionRefused  = "session refused" // fields limit, reason
	MsgConnected       = "connected to server"
	MsgUpstreamDown    = "upstream unreachable"
	MsgPassiveRewrite  = "passive mode rewritten" // fields request, server_reply, server_data, client_reply, listen
	MsgActiveRewrite   = "active mode rewritten"  // fields verb, client_data, sent, listen
	MsgTranslated      = "translated"
	MsgFallback        = "server refused the command, translating" // fields refused (the verb), sending (PASV or PORT)
	MsgEPSVAllRefused  = "command refused after EPSV ALL"
	MsgEPSVAllHonoured = "server did not accept EPSV ALL; the proxy honours it"
	MsgEPSVRefused     = "EPSV refused (epsv refuse): the client is told to use PASV" // field command; once per session

	MsgDataConnected  = "data connection established"        // field path: splice or kernel
	MsgSpliceFallback = "data path: splice for this session" // field error: why the kernel cannot carry it
	MsgDataNotMade    = "data connection not made in time"
	MsgDataForeign    = "data connection from a foreign address refused"
	MsgDataFailed     = "data connection failed"
	MsgPinholeFailed  = "closing pinhole failed"
	MsgListenFailed   = "cannot listen for a data connection"
	MsgRefusedOmitted = "refused input not logged" // field count: warnings past the per-session limit
	MsgBadLine        = "command refused: bare CR, LF or NUL"
	MsgLoginTimeout   = "login timeout"
	MsgDataIdle       = "data connection idle, aborting the transfer"

	MsgFDLimitLow    = "the session limit needs more file descriptors than RLIMIT_NOFILE allows: sessions beyond it will be refused for lack of descriptors"
	MsgFDLimitFitted = "session limit lowered to what the descriptor limit carries"
	MsgOutOfFDs      = "out of file descriptors or memory: cannot connect to the server"
	MsgAcceptFailed  = "accept failed, retrying"
	MsgOutOfFDsSpare = "out of file descriptors: refused a connection with the spare descriptor"

	MsgTransferFinished  = "transfer finished"    // data ended cleanly and the server confirmed it (2xx)
	MsgTransferFailed    = "transfer failed"      // the server answered 4xx/5xx, or a peer reset the data connection
	MsgTransferAborted   = "transfer aborted"     // ftpalg cut it (shutdown, data idle timeout): both peers got a reset
	MsgTransferNoConfirm = "transfer unconfirmed" // data ended, but the server never answered the transfer command

	MsgTLSEstablished   = "TLS established"        // fields leg (client, server, client_data, server_data), version, cipher, resumed
	MsgTLSFailed        = "TLS handshake failed"   // fields leg, error
	MsgTLSRefused       = "the server refused TLS" // field reply: its answer to AUTH TLS
	MsgTLSNotResumed    = "client data connection did not resume the control connection's TLS session: refused"
	MsgTLSUpstreamPlain = "the server offers no AUTH TLS: plain control connection" // --upstream-tls auto
)
