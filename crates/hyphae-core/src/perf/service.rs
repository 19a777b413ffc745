//! Perf as a node service: serves `/perf/1.0.0` when asked to, and runs exchanges on command. Bulk bytes
//! go out with `Cx::write_static` from the constant [`BLOCK`] (no copy before the connection takes them;
//! the next block follows each `Drained`) and come in through one large read buffer (`read_chunk`), so
//! the router adds no copy to what a stream handler costs.

use super::{Event, Failure, RunId, Server, ServerState, BLOCK, PROTOCOL_ID};
use crate::identity::PeerId;
use crate::service::{ConnId, ConnectionEvent, Cx, Event as NodeEvent, Service, StreamEvent};
use crate::stream::{OpenError, StreamId};
use crate::time::{Duration, Instant};
use std::collections::BTreeMap;

/// Bytes read per `Data` event (the router's bulk buffer).
pub const READ_CHUNK: usize = 256 * 1024;
/// How often a run reports progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One outbound exchange.
struct Run {
    conn: ConnId,
    peer: PeerId,
    stream: Option<StreamId>,
    upload_left: u64,
    uploaded: u64,
    download: u64,
    got: u64,
    closed: bool,
    started: Instant,
    last_report: Instant,
    up_since: u64,
    down_since: u64,
}

/// One inbound exchange.
#[derive(Default)]
struct Serving {
    server: Server,
    /// Bytes still to send, once the upload ended.
    left: Option<u64>,
    sent: u64,
}

#[derive(Default)]
pub struct PerfService {
    /// Serve `/perf/1.0.0` (announced only then). Off by default: perf is a benchmark, a node does not
    /// hand out bandwidth to anyone who asks unless told to.
    serve: bool,
    next_run: u64,
    runs: BTreeMap<RunId, Run>,
    by_stream: BTreeMap<(ConnId, StreamId), RunId>,
    serving: BTreeMap<(ConnId, StreamId), Serving>,
}

impl PerfService {
    pub fn new(serve: bool) -> Self {
        PerfService { serve, ..Self::default() }
    }

    /// Starts serving (call `Node::update_protocols` after it, so the protocol is routed and announced).
    pub fn set_serve(&mut self, serve: bool) {
        self.serve = serve;
    }

    /// Starts one exchange on `conn`: upload `upload` bytes, then download `download`. Its outcome comes
    /// as `Event::Perf(Done | Failed)` with the returned id; `None` if `conn` is not established.
    pub fn start(&mut self, cx: &mut Cx<'_>, conn: ConnId, upload: u64, download: u64) -> Option<RunId> {
        let (peer, _) = cx.connection(conn)?;
        self.next_run += 1;
        let run = RunId(self.next_run);
        // Optimistic (multistream-select's lazy mode): the size header and the first block follow the
        // proposal at once instead of a round trip later (60 ms of a 1 GiB run on a 60 ms path, ~2.5%;
        // go-libp2p also opens lazily once it knows the protocol). A peer that does not serve perf
        // resets the stream: `Failure::Reset`.
        cx.open_stream_lazy(conn, PROTOCOL_ID, run.0);
        let r = Run {
            conn,
            peer,
            stream: None,
            upload_left: upload,
            uploaded: 0,
            download,
            got: 0,
            closed: false,
            started: cx.now,
            last_report: cx.now,
            up_since: 0,
            down_since: 0,
        };
        self.runs.insert(run, r);
        Some(run)
    }

    /// Writes the next upload block, or closes our side once all is sent.
    fn upload(r: &mut Run, cx: &mut Cx<'_>) {
        let Some(s) = r.stream else { return };
        if r.upload_left > 0 {
            let k = r.upload_left.min(BLOCK.len() as u64) as usize;
            cx.write_static(r.conn, s, &BLOCK[..k]);
            r.upload_left -= k as u64;
            r.uploaded += k as u64;
            r.up_since += k as u64;
        } else if !r.closed {
            r.closed = true;
            cx.close_stream(r.conn, s);
        }
    }

    fn end(&mut self, cx: &mut Cx<'_>, run: RunId, outcome: Result<(), Failure>) {
        let Some(r) = self.runs.remove(&run) else { return };
        if let Some(s) = r.stream {
            self.by_stream.remove(&(r.conn, s));
            match outcome {
                Ok(()) => cx.release(r.conn, s),
                Err(_) => cx.reset_stream(r.conn, s),
            }
        }
        let ev = match outcome {
            Ok(()) => Event::Done {
                run,
                peer: r.peer,
                elapsed: cx.now.saturating_duration_since(r.started),
                uploaded: r.uploaded,
                downloaded: r.got,
            },
            Err(error) => Event::Failed { run, peer: r.peer, error },
        };
        cx.emit(NodeEvent::Perf(ev));
    }

    /// Sends the next block of a served download, or closes once all is sent.
    fn serve_next(sv: &mut Serving, cx: &mut Cx<'_>, conn: ConnId, s: StreamId) -> bool {
        let Some(left) = sv.left.as_mut() else { return false };
        if *left == 0 {
            cx.finish(conn, s);
            return true;
        }
        let k = (*left).min(BLOCK.len() as u64) as usize;
        cx.write_static(conn, s, &BLOCK[..k]);
        *left -= k as u64;
        sv.sent += k as u64;
        false
    }

    fn on_served_stream(&mut self, cx: &mut Cx<'_>, conn: ConnId, s: StreamId, ev: StreamEvent<'_>) {
        let Some(sv) = self.serving.get_mut(&(conn, s)) else { return };
        let done = match ev {
            StreamEvent::Data(d) => {
                sv.server.handle_input(d);
                false
            }
            StreamEvent::Eof => match sv.server.handle_eof() {
                Ok(ServerState::Send(n)) => {
                    sv.left = Some(n);
                    Self::serve_next(sv, cx, conn, s)
                }
                Ok(ServerState::Reading) | Err(_) => {
                    tracing::debug!(%conn, "perf stream ended before its size header: reset");
                    cx.reset_stream(conn, s);
                    self.serving.remove(&(conn, s));
                    return;
                }
            },
            StreamEvent::Drained => Self::serve_next(sv, cx, conn, s),
            StreamEvent::Reset => {
                self.serving.remove(&(conn, s));
                return;
            }
            StreamEvent::Opened { .. } => false,
        };
        if done {
            let sv = self.serving.remove(&(conn, s)).expect("invariant: present");
            if let Some((peer, _)) = cx.connection(conn) {
                let ev = Event::Served { peer, conn, uploaded: sv.server.uploaded(), downloaded: sv.sent };
                cx.emit(NodeEvent::Perf(ev));
            }
        }
    }
}

impl Service for PerfService {
    fn name(&self) -> &'static str {
        "perf"
    }

    fn protocols(&self) -> Vec<String> {
        if self.serve {
            vec![PROTOCOL_ID.into()]
        } else {
            Vec::new()
        }
    }

    fn read_chunk(&self) -> usize {
        READ_CHUNK
    }

    fn on_connection(&mut self, cx: &mut Cx<'_>, ev: ConnectionEvent<'_>) {
        if let ConnectionEvent::Closed { conn, .. } = ev {
            self.serving.retain(|(c, _), _| *c != conn);
            let gone: Vec<RunId> = self.runs.iter().filter(|(_, r)| r.conn == conn).map(|(id, _)| *id).collect();
            for run in gone {
                self.end(cx, run, Err(Failure::Closed));
            }
        }
    }

    fn on_inbound(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, _protocol: &str) {
        if !self.serve {
            // Routed here before serving was turned off: refuse.
            cx.reset_stream(conn, stream);
            return;
        }
        self.serving.insert((conn, stream), Serving::default());
    }

    fn on_stream(&mut self, cx: &mut Cx<'_>, conn: ConnId, stream: StreamId, ev: StreamEvent<'_>) {
        if self.serving.contains_key(&(conn, stream)) {
            return self.on_served_stream(cx, conn, stream, ev);
        }
        if let StreamEvent::Opened { token, .. } = ev {
            let run = RunId(token);
            let Some(r) = self.runs.get_mut(&run) else {
                cx.reset_stream(conn, stream);
                return;
            };
            r.stream = Some(stream);
            self.by_stream.insert((conn, stream), run);
            cx.write(conn, stream, &r.download.to_be_bytes());
            Self::upload(r, cx);
            return;
        }
        let Some(&run) = self.by_stream.get(&(conn, stream)) else { return };
        let r = self.runs.get_mut(&run).expect("invariant: by_stream names live runs");
        match ev {
            StreamEvent::Drained => Self::upload(r, cx),
            StreamEvent::Data(d) => {
                r.got += d.len() as u64;
                r.down_since += d.len() as u64;
            }
            StreamEvent::Eof => {
                let (got, asked) = (r.got, r.download);
                let outcome = if got == asked && r.closed { Ok(()) } else { Err(Failure::Short { got, asked }) };
                self.end(cx, run, outcome);
            }
            StreamEvent::Reset => {
                self.by_stream.remove(&(conn, stream));
                r.stream = None;
                self.end(cx, run, Err(Failure::Reset));
            }
            StreamEvent::Opened { .. } => {}
        }
    }

    fn on_open_failed(&mut self, cx: &mut Cx<'_>, _conn: ConnId, token: u64, reason: &OpenError) {
        self.end(cx, RunId(token), Err(Failure::Open(reason.clone())));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.runs.values().map(|r| r.last_report + PROGRESS_EVERY).min()
    }

    fn on_timeout(&mut self, cx: &mut Cx<'_>) {
        for (run, r) in &mut self.runs {
            if r.last_report + PROGRESS_EVERY <= cx.now {
                let ev = Event::Progress {
                    run: *run,
                    elapsed: cx.now.saturating_duration_since(r.last_report),
                    uploaded: r.up_since,
                    downloaded: r.down_since,
                };
                cx.emit(NodeEvent::Perf(ev));
                r.last_report = cx.now;
                r.up_since = 0;
                r.down_since = 0;
            }
        }
    }

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Event as NodeEvent;
    use crate::testing::Net;

    /// Node 0 runs perf against node 1 (serving when `serve`); returns the net after `secs` seconds.
    /// Yamux windows stay at their initial 1 MiB unless `grow`.
    fn exchange_with(serve: bool, upload: u64, download: u64, secs: u64, grow: bool) -> (Net, RunId) {
        let mut p = Net::new(2, |_, c| {
            if !grow {
                c.conn_limits.yamux.max_stream_window = c.conn_limits.yamux.stream_window;
            }
        });
        p.nodes[0].add_service(Instant(0), Box::new(PerfService::new(false)));
        p.nodes[1].add_service(Instant(0), Box::new(PerfService::new(serve)));
        let (a, b) = (p.addr(1), p.peer_id(1));
        p.dial(0, a);
        p.run_for(Duration::from_secs(1));
        let now = p.now;
        let conn = p.nodes[0].node().connections_to(&b)[0];
        let run = p.nodes[0].with_service::<PerfService, _>(now, |s, cx| s.start(cx, conn, upload, download)).unwrap().unwrap();
        p.run_for(Duration::from_secs(secs));
        (p, run)
    }

    fn exchange(serve: bool, upload: u64, download: u64, secs: u64) -> (Net, RunId) {
        exchange_with(serve, upload, download, secs, false)
    }

    fn done_after(p: &Net, run: RunId) -> Option<Duration> {
        perf_events(&p.events[0]).iter().find_map(|e| match e {
            Event::Done { run: r, elapsed, .. } if *r == run => Some(*elapsed),
            _ => None,
        })
    }

    #[test]
    fn perf_service_transfer_speeds_up_as_yamux_windows_grow() {
        // 40 MB at 20 ms RTT: a fixed 1 MiB window moves at most 1 MiB per round trip (38 round trips,
        // 763 ms at best); grown windows move it in a fraction of that.
        let (fixed, run) = exchange_with(true, 20_000_000, 20_000_001, 10, false);
        let fixed = done_after(&fixed, run).expect("done with fixed windows");
        let (grown, run) = exchange_with(true, 20_000_000, 20_000_001, 10, true);
        let grown = done_after(&grown, run).expect("done with growing windows");
        assert!(fixed > Duration::from_millis(763), "{fixed:?}");
        assert!(grown * 3 < fixed, "grown {grown:?} vs fixed {fixed:?}");
    }

    fn perf_events(evs: &[NodeEvent]) -> Vec<Event> {
        evs.iter().filter_map(|e| if let NodeEvent::Perf(p) = e { Some(p.clone()) } else { None }).collect()
    }

    #[test]
    fn perf_service_moves_what_was_asked_both_ways_and_reports_progress() {
        // 60 MB at 20 ms RTT through fixed 1 MiB windows (at most a window per round trip): over a
        // second of virtual time, so progress is reported.
        let (p, run) = exchange(true, 30_000_000, 30_000_001, 10);
        let client = perf_events(&p.events[0]);
        let done = client.iter().find_map(|e| match e {
            Event::Done { run: r, uploaded, downloaded, elapsed, .. } if *r == run => Some((*uploaded, *downloaded, *elapsed)),
            _ => None,
        });
        let (up, down, elapsed) = done.unwrap_or_else(|| panic!("no Done: {client:?}"));
        assert_eq!((up, down), (30_000_000, 30_000_001));
        // Progress reports add up to what moved before the last second.
        let progressed: u64 =
            client.iter().map(|e| if let Event::Progress { uploaded, downloaded, .. } = e { uploaded + downloaded } else { 0 }).sum();
        let reports = client.iter().filter(|e| matches!(e, Event::Progress { .. })).count() as u64;
        assert!(elapsed > Duration::from_secs(1), "{elapsed:?}");
        assert_eq!(reports, elapsed.as_nanos() as u64 / 1_000_000_000);
        assert!(progressed > 0 && progressed <= up + down, "{progressed}");
        let server = perf_events(&p.events[1]);
        assert!(server.iter().any(|e| matches!(e, Event::Served { uploaded: 30_000_000, downloaded: 30_000_001, .. })), "{server:?}");
        // Nothing left behind: the streams were released on both sides.
        assert_eq!(p.nodes[0].stats().writes_dropped, 0);
    }

    #[test]
    fn perf_service_empty_exchange_and_refusal_when_not_serving() {
        let (p, run) = exchange(true, 0, 0, 2);
        assert!(perf_events(&p.events[0]).iter().any(|e| matches!(e, Event::Done { run: r, uploaded: 0, downloaded: 0, .. } if *r == run)));
        let (p, run) = exchange(false, 10, 10, 2);
        let ev = perf_events(&p.events[0]);
        assert!(ev.iter().any(|e| matches!(e, Event::Failed { run: r, error: Failure::Reset, .. } if *r == run)), "{ev:?}");
    }

    #[test]
    fn perf_service_serves_once_turned_on_and_announces_it() {
        let mut p = Net::new(2, |_, _| {});
        p.nodes[1].add_service(Instant(0), Box::new(PerfService::new(false)));
        assert!(!p.nodes[1].node().protocols().contains(&PROTOCOL_ID.to_string()));
        p.nodes[1].with_service::<PerfService, _>(Instant(0), |s, _| s.set_serve(true));
        p.nodes[1].update_protocols(Instant(0));
        assert!(p.nodes[1].node().protocols().contains(&PROTOCOL_ID.to_string()));
    }
}
