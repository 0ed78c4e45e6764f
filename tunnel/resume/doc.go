// Package resume makes a stream between relay and agent outlive the
// session it runs on: when the session dies (the home uplink's outage, a
// NAT rebinding, a move to another network, a change of transport), the
// stream waits, and a stream of a new session takes it over without
// losing, repeating or reordering a byte. Not yet used by relay and
// agent (see docs/wire.md, "Resumable streams").
//
// # Parts
//
// A Conn is one end of a resumable stream, named by an ID (random, 64
// bits, chosen by the end that opens it). It is a tunnel.Stream, so
// tunnel.Splice carries it as any stream. It runs on one underlying
// tunnel.Stream at a time.
//
// A Registry keeps the Conns between one relay and one agent across
// their sessions: Open opens a Conn on the current session, Handle takes
// what the peer opened (a new Conn, a resume, or the peer's ack channel),
// Attach makes a new session current, opens its ack channel and resumes
// the detached Conns on it.
//
// # Offsets
//
// Each end counts the bytes of each direction from the start of the
// Conn, whatever stream carried them: sent (written into the ring) and
// consumed (read by the user). The end of stream counts as one more byte
// consumed once the reader has read it, so that a count also says
// whether the end arrived. Counts never go back.
//
// The sender keeps [acked, sent) in a ring: acked is the highest count
// the peer reported consumed. Write copies into the ring and then writes
// the caller's buffer to the underlying stream; a Write that finds the
// ring full waits, for its deadline, for the peer's counts.
//
// # Session death, reset and end
//
// An underlying stream that fails is one of three things:
//
//   - its session died (tunnel.ErrStreamCut, tunnel.ErrSessionClosed,
//     tunnel.ErrPeerClosed, or the session's Done closed within 2 s of
//     the error; the Registry also watches every session's Done): the
//     Conn detaches. Read and Write wait (for their deadlines, an attach,
//     or the resume window); nothing is lost.
//   - a reset (tunnel.ErrStreamReset, the transport's cut through
//     OnCut, or any error on a session that lives on): the Conn ends with
//     that error, resets the underlying stream, and is not resumed.
//   - an end of stream (io.EOF): delivered as io.EOF, and counted.
//
// Only the Conn's own deadline, once passed, makes a timeout that Read or
// Write returns; another timeout (QUIC's idle timeout) is its session's
// end.
//
// A Conn detached for longer than the resume window (Config.ResumeWindow,
// 2 minutes) ends with ErrExpired at both ends; the caller then resets
// its own socket: a cut must never look like an end.
//
// # Attach
//
// The end that opened a Conn resumes it: it opens a stream on the new
// session and sends a resume frame {ID, consumed}. The peer checks it
// (acked <= consumed <= sent, counting a sent end of stream), switches
// the Conn to the new stream, answers {ID, consumed} with its own count,
// and sends again its bytes from the resumer's count on; the resumer,
// having read the answer and checked it the same way, does the same. An
// end of stream that was sent is sent again after those bytes. Each end
// takes its own count under the Conn's lock in the same step as it
// switches streams, and a read that returns from the old stream after
// the switch is dropped (its generation is stale): the peer sends those
// bytes again, so they are read once.
//
// Writes are ordered by a write token: Write, CloseWrite and the resend
// after an attach each hold it while they write to the underlying stream.
// An attach that finds a Write in progress leaves the resend to it (the
// Write checks before each chunk), and the Write, when it lets go,
// resends anything an attach asked for meanwhile; so a resend happens
// once, before any newer byte.
//
// A resume the accepting end cannot take is refused with a refused frame
// and changes nothing: an unknown or ended ID, a count outside what was
// sent. The resumer then ends its Conn with ErrRefused, which wraps
// tunnel.ErrStreamReset. An answer that breaks the protocol, or an ack
// beyond what was sent, ends that Conn with ErrProtocol (a reset).
//
// # Acks: one channel per session
//
// The counts reach the sender while the session lives on an ack channel:
// one stream each end opens per session (Attach), which carries only
// records {ID, consumed}, batched: a Conn's count is sent once AckBytes
// (Window/8) were consumed since its last, or else within AckDelay (10
// ms), all Conns' counts in one write. A Conn that is reset while
// detached tells the peer by a reset record on it.
//
// The alternative, counts framed inside each stream, was rejected: the
// count for one direction would ride on the other direction's stream,
// behind its data, so a user that stops reading one direction (a
// half-closed upload, a client that pipelines) stops the counts of the
// other, the sender's ring fills, and both directions stall for good. It
// would also need a frame header in every data chunk and a parser in
// every Read. The channel costs one stream per session and one small
// write per batch (at most one per AckBytes a stream consumes, about one
// per 512 KiB in bulk), and leaves the data streams' bytes as they are.
//
// # Wire format
//
// Every frame is 17 bytes: a kind (u8), an ID (u64) and a value (u64),
// big-endian. The first frame of each stream says what the stream is.
//
//	kind  name         where                             value
//	0x01  open         first on a new stream             0
//	0x02  resume       first on a resuming stream        consumed
//	0x03  resumed      the answer to a resume            consumed
//	0x04  refused      the answer to a resume            1 unknown ID, 2 bad count, 3 closing
//	0x05  ack channel  first on an ack channel (ID 0)    0
//	0x06  ack          a record on an ack channel        consumed
//	0x07  reset        a record on an ack channel        0
//
// An ID is never 0 but on the ack channel frame; a count is at most
// 2^62. Anything else is ErrProtocol, and is checked before it acts: the
// first frame of a stream within AttachTimeout (10 s), on a read deadline.
// An open needs no answer, so a new stream costs no round trip.
//
// # Bounds
//
//   - A Conn's ring starts at 64 KiB and doubles while full, up to
//     Config.Window (4 MiB); all rings of a Registry together up to
//     Config.Total (256 MiB). A Write that cannot grow its ring waits for
//     acks, or for another Conn to free its ring. A Conn keeps its ring
//     until it ends, or until Shrink finds it empty (tunnel.Splice calls
//     it once the Conn's reads have drained and idled for a second). The ring also bounds a stream's rate to Window per
//     round trip plus AckDelay.
//   - A Conn closed by its user keeps its unconsumed bytes until the
//     peer has consumed them and the end of stream, for at most the
//     resume window; it then closes the underlying stream (or resets it,
//     as TCP does, if the peer's data was not read to its end).
//   - A Conn closed by its user, or reset, also tells the peer by a
//     reset record, so that a peer that no longer reads learns of it.
//   - Goroutines: none per Conn but its users', and one per Conn while a
//     resume is under way; per Registry one ack writer and one per
//     attached session that waits for its end; the peer's ack channel is
//     read on the goroutine that called Handle for it.
//
// # Limits
//
//   - A stream whose session dies before its open frame has reached the
//     peer cannot be resumed: the peer refuses the unknown ID, and the
//     opener reads a reset.
//   - tunnel.Splice bounds a write that makes no progress, once the other
//     direction has ended, by tunnel.StallTimeout (30 s): a half-closed
//     splice whose Conn stays detached longer is reset before the resume
//     window ends.
//   - A resume that arrives while the accepting end still believes in
//     its old session takes the stream over (the old stream is closed);
//     the end that resumes does so only once its own session has ended.
//
// # Cost
//
// The one added cost per byte is the copy into the ring: tunnel.Splice
// writes from a buffer it reuses, so the bytes must be copied to be
// kept. (A Splice that read into the ring through an io.ReaderFrom of
// the Conn would save it; that is a change to tunnel.Splice.) Write and
// Read take the Conn's lock a few times each and allocate nothing.
// BenchmarkSplice, 64 KiB writes one way through
// x -TCP- Splice -stream- Splice -TCP- y on loopback, on 2 cores shared
// with other work: medians of two sets of 6 interleaved runs each (single
// runs varied by 30 to 60%, so no figure here is finer than that):
//
//	              MB/s            CPU ms per GB
//	              plain  resume   plain  resume  resume/plain
//	tcp   set 1    231    282     2576   2616    +1.6%
//	tcp   set 2    264    219     2966   3131    +5.6%
//	quic  set 1    136    111     5795   6106    +5.4%
//	quic  set 2    101    166     7032   7136    +1.5%
//
// In CPU profiles of the resume runs, the copy into the ring (ring.put)
// takes 2.5 to 7% of the samples (3.5% typically), and the rest of the
// package's own code (locks, the ack channel) about 1%; no allocation per Write or Read
// (allocs/op are the same with and without). A ring of 1 MiB instead of 4
// made no difference that the noise let show.
package resume
