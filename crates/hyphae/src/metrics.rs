//! Metrics in the OpenMetrics text format (what Prometheus scrapes) (`host.metrics_text()`; `hyphae node --metrics ADDR` serves
//! it). Encoded by `prometheus-client` (the Prometheus project's Rust client, which rust-libp2p uses
//! too): the exposition format has escaping and type rules worth not rewriting.
//!
//! Most values are the machines' own counters (`node::Stats`, the resource manager's usage, gossipsub
//! and Kademlia stats), read at scrape time; the drivers add what only they see: bytes on the wire and
//! ping round trips.

use crate::handle::{Direction, HostLink};
use crate::host::Host;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

type Labels = Vec<(String, String)>;

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

/// A counter per value of one label: `name{label="value"}`.
fn counters_by(r: &mut Registry, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let f: Family<Labels, Counter> = Family::default();
    for (value, v) in values {
        f.get_or_create(&labels(&[(label, value)])).inc_by(*v);
    }
    r.register(name, help, f);
}

fn gauge(r: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    r.register(name, help, g);
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Host {
    /// Every metric of the host, in the Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        let mut r = Registry::with_prefix("hyphae");
        let (stats, rc_sys, rc_tr, rc_streams, rc_limits, cm, peers) = {
            let n = self.inner.node();
            let rc = n.resources();
            (
                n.stats(),
                rc.system(),
                rc.transient(),
                rc.system_streams(),
                rc.limits().clone(),
                n.connmgr().stats().clone(),
                n.peerstore().len(),
            )
        };

        // Connections and streams now, by direction and transport.
        let conns: Family<Labels, Gauge> = Family::default();
        let streams: Family<Labels, Gauge> = Family::default();
        for c in self.connections() {
            let dir = if c.direction == Direction::Inbound { "inbound" } else { "outbound" };
            let tr = if c.remote_addr.iter().any(|p| matches!(p, hyphae_core::Protocol::QuicV1)) { "quic" } else { "tcp" };
            conns.get_or_create(&labels(&[("direction", dir), ("transport", tr)])).inc();
            streams.get_or_create(&labels(&[("transport", tr)])).inc_by(c.streams as i64);
        }
        r.register("connections", "Established connections", conns);
        r.register("streams", "Open streams", streams);
        counter(&mut r, "connections_established", "Connections whose handshake finished", stats.connections_established);
        counter(&mut r, "dials_failed", "Dials that failed", stats.dials_failed);
        let hs: Family<Labels, Counter> = Family::default();
        for (kind, n) in &stats.handshakes_failed {
            hs.get_or_create(&labels(&[("reason", kind)])).inc_by(*n);
        }
        r.register("handshakes_failed", "Connections closed before their handshake finished, by reason", hs);
        counter(&mut r, "connections_idle_closed", "Connections closed for being idle", stats.connections_idle_closed);

        // Bytes on the wire.
        let bytes: Family<Labels, Counter> = Family::default();
        let live = &self.inner.live;
        for (tr, dir, v) in
            [("tcp", "in", &live.tcp_in), ("tcp", "out", &live.tcp_out), ("quic", "in", &live.udp_in), ("quic", "out", &live.udp_out)]
        {
            bytes.get_or_create(&labels(&[("transport", tr), ("direction", dir)])).inc_by(v.load(Ordering::Relaxed));
        }
        r.register("bytes", "Bytes sent and received on sockets (TCP payload, UDP datagrams)", bytes);

        // The resource manager.
        let rs = &stats.resources;
        counters_by(
            &mut r,
            "rcmgr_refused",
            "Connections refused by the resource manager, by scope",
            "scope",
            &[
                ("system", rs.refused_system),
                ("transient", rs.refused_transient),
                ("peer", rs.refused_peer),
                ("subnet", rs.refused_subnet),
                ("quic_handshake", self.inner.quic_handshakes_refused()),
            ],
        );
        counters_by(
            &mut r,
            "rcmgr_streams_refused",
            "Streams reset by the resource manager (either direction), by the scope that was full",
            "scope",
            &[("system", rs.refused_streams_system), ("peer", rs.refused_streams_peer), ("protocol", rs.refused_streams_protocol)],
        );
        let gate = &self.inner.gate;
        if gate.is_on() {
            counter(
                &mut r,
                "send_gate_closed",
                "Times the send gate closed: the bytes waiting for TCP sockets reached HostConfig::send_limit",
                gate.closed.load(Ordering::Relaxed),
            );
            counter(
                &mut r,
                "send_gate_stalls",
                "Connections that stopped counting in the send gate after their socket took nothing for 100 ms",
                gate.stalls.load(Ordering::Relaxed),
            );
            let unsent: Gauge = Gauge::default();
            unsent.set(gate.unsent() as i64);
            r.register("send_gate_unsent_bytes", "Bytes counted in the send gate: taken for TCP sockets, not yet accepted by them", unsent);
        }
        let os = self.inner.quic_open_stats();
        counters_by(
            &mut r,
            "quic_stream_opens_limited",
            "QUIC stream opens that met the peer's stream limit: waited for its MAX_STREAMS, or refused with max_streams opens already waiting",
            "outcome",
            &[("waited", os.waited), ("refused", os.refused)],
        );
        let (losses, windows) = self.inner.quic_flow_stats();
        counters_by(
            &mut r,
            "quic_losses",
            "QUIC loss events under the loss-tolerant congestion control: taken for congestion (a backoff) or let pass as random",
            "decision",
            &[("congestion", losses.congestion), ("tolerated", losses.tolerated)],
        );
        counter(&mut r, "quic_slow_start_exits", "QUIC slow starts ended by a grown round trip (HyStart++)", losses.slow_start_exits);
        counters_by(
            &mut r,
            "quic_receive_window_doublings",
            "QUIC connection receive windows doubled for a fast reader, or not because the memory budget was full",
            "outcome",
            &[("grown", windows.grown), ("refused", windows.refused)],
        );
        let usage: Family<Labels, Gauge> = Family::default();
        let limit: Family<Labels, Gauge> = Family::default();
        for (scope, u, l) in [("system", rc_sys, rc_limits.system), ("transient", rc_tr, rc_limits.transient)] {
            for (res, v, lim) in [
                ("conns_inbound", u.conns_inbound, l.conns_inbound),
                ("conns_outbound", u.conns_outbound, l.conns_outbound),
                ("fd", u.fd, l.fd),
            ] {
                usage.get_or_create(&labels(&[("scope", scope), ("resource", res)])).set(v as i64);
                limit.get_or_create(&labels(&[("scope", scope), ("resource", res)])).set(lim.min(i64::MAX as u32) as i64);
            }
        }
        let ss = &rc_limits.system_streams;
        for (res, v, lim) in [
            ("streams_inbound", rc_streams[0], ss.inbound),
            ("streams_outbound", rc_streams[1], ss.outbound),
            ("streams", rc_streams[0] + rc_streams[1], ss.total),
        ] {
            usage.get_or_create(&labels(&[("scope", "system"), ("resource", res)])).set(i64::from(v));
            limit.get_or_create(&labels(&[("scope", "system"), ("resource", res)])).set(i64::from(lim));
        }
        r.register("rcmgr_usage", "What each resource-manager scope holds", usage);
        r.register("rcmgr_limit", "Each resource-manager scope's limit", limit);
        let mem = &self.inner.memory;
        gauge(&mut r, "rcmgr_memory_used_bytes", "Muxer receive buffers reserved from the system memory budget", mem.used() as i64);
        gauge(&mut r, "rcmgr_memory_limit_bytes", "The system memory budget", mem.limit().min(i64::MAX as u64) as i64);
        counter(
            &mut r,
            "rcmgr_memory_refused",
            "Reservations the system memory budget refused (a stream refused or reset, a window not grown)",
            mem.refused(),
        );
        counter(
            &mut r,
            "rcmgr_memory_peer_refused",
            "Reservations refused because one peer's share of the memory budget was full",
            mem.peer_refused(),
        );
        counter(&mut r, "rcmgr_allowlisted_admits", "Connections admitted under the allowlisted scopes", rs.allowlisted_admits);

        // The connection manager, the peerstore.
        counter(&mut r, "connmgr_trims", "Trims run by the connection manager", cm.trims);
        counter(&mut r, "connmgr_trimmed_connections", "Connections closed by the connection manager", cm.connections_trimmed);
        gauge(&mut r, "peerstore_peers", "Peers in the peerstore", peers as i64);

        // Protocols.
        counter(&mut r, "pings_ok", "Pings answered", stats.pings_ok);
        counter(&mut r, "pings_failed", "Pings that failed", stats.pings_failed);
        r.register("ping_rtt_seconds", "Ping round-trip times", live.ping_rtt.clone());
        counter(&mut r, "identifies", "Identify exchanges that completed", stats.identifies);
        counter(&mut r, "violations", "Protocol violations by peers", stats.violations);
        let ps = self.pubsub().stats();
        counter(&mut r, "gossipsub_messages_received", "Gossipsub messages received (duplicates included)", ps.messages_received);
        counter(&mut r, "gossipsub_duplicates", "Gossipsub duplicate messages", ps.duplicates);
        counter(&mut r, "gossipsub_delivered", "Gossipsub messages delivered to the application", ps.delivered);
        counter(&mut r, "gossipsub_published", "Gossipsub messages published", ps.published);
        counter(&mut r, "gossipsub_invalid_messages", "Gossipsub messages rejected as invalid", ps.invalid_messages);
        let ks = self.dht().stats();
        counter(&mut r, "kad_requests_sent", "Kademlia requests sent", ks.requests_sent);
        counter(&mut r, "kad_requests_served", "Kademlia requests served", ks.requests_served);
        gauge(&mut r, "kad_routing_table_peers", "Peers in the Kademlia routing table", self.dht().routing_table_size() as i64);

        let mut out = String::new();
        encode(&mut out, &r).expect("invariant: writing to a String cannot fail");
        out
    }
}
